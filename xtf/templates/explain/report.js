// The explanation page's controls (xtf.explain): which attribute colours the tokens, and the ground-truth outline.
(function () {
  var body = document.body;
  body.setAttribute('data-js', '1');  // shows the .js controls, which do nothing without a script
  document.querySelectorAll('input[name=colour]').forEach(function (radio) {
    radio.addEventListener('change', function () { body.setAttribute('data-colour', radio.value); });
  });
  var truth = document.getElementById('show-truth');
  if (truth) {
    truth.addEventListener('change', function () { body.classList.toggle('show-truth', truth.checked); });
  }
})();
