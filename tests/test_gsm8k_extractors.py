"""GSM8K answer extraction against lm-eval's own filters, and the released XTF code's rule (moved here from
tests/test_faithful.py, which compares xtf_official with the released scripts).

    .venv/bin/python -m pytest -q tests/test_gsm8k_extractors.py
"""

import pytest

TRICKY = ["#### 72", "####72", "#### $72", "#### 72.00", "#### 72.", "#### -5", "#### 1,000",
          "The answer\n#### 18 dollars", "#### 3 #### 4", "no answer", "$1,000.", "costs 3.50 each",
          "-7 degrees", "It is 5. Then 6", "1,000 apples", "#### .5", "x = 12.0"]


@pytest.mark.parametrize("text", TRICKY)
def test_gsm8k_strict_and_flexible_are_lm_evals(text):
    """Our extractors + gold comparison give exactly lm-eval's gsm8k filters + exact_match normalisation."""
    import lm_eval.api.metrics as M
    from lm_eval.filters.extraction import RegexFilter

    from xtf.tasks import gsm8k

    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    filters = {"strict": RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)"),
               "flexible": RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)}
    for name, flt in filters.items():
        pred = flt.apply([[text]], [{}])[0][0]
        for gold in ("72", "1000", "-5", "3.5", "12", "0.5", "6"):
            theirs = M.exact_match_hf_evaluate([pred], [gold], regexes_to_ignore=ignore, ignore_case=True)
            ours = gsm8k.EXTRACTORS[name](text)
            assert (ours == gsm8k.lmeval_normalise(gold)) == bool(theirs["exact_match"]), (name, text, gold, ours)


def test_gsm8k_released_rule():
    from xtf.tasks.gsm8k import extract_released, released_filter

    assert extract_released("so -5 degrees") == "5"            # no minus sign
    assert extract_released("1,000 apples") == "0"             # "1,000" splits: the last match is "000"
    assert extract_released("72.50 then 72.0") == "72"         # compared as a number
    assert extract_released("none") is None
    assert released_filter([["no number"]], [{"prompt": "Tom has 3 apples"}]) == [["3"]]  # prompt + output
