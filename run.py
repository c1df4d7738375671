"""The doorway: compose the config with Hydra, validate it, run one experiment cell (xtf/cli.py; the installed
command `xtf` is the same).
    python run.py                                        # the embedded default: synth task, tiny model
    python run.py -m method=normal,xtf seed=0,1,2        # a sweep (cluster=slurm: on SLURM; slurm/README.md)
"""

from xtf.cli import main

if __name__ == "__main__":
    main()
