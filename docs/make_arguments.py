"""Write docs/arguments.md from the code: the arguments are declared (and documented) once, in the models' classes.

    .venv/bin/python docs/make_arguments.py > docs/arguments.md

``tests/unit/training/test_training_module.py`` checks that the committed page is what this prints.
"""

import inspect

from docstring_parser import parse

from anomalib_destseg import PFADSeg
from anomalib_destseg.training import TwoStageTraining

HEADER = """# Model arguments

Generated from the code by `docs/make_arguments.py` (do not edit by hand). `DeSTSeg` takes the two-stage recipe's
arguments (`anomalib_destseg.training.TwoStageTraining`); `PFADSeg` takes the same and two of its own. **Every
default is the reference recipe.** On the command line each is a `--model.<name>` flag
(`anomalib train --model anomalib_destseg.DeSTSeg --help`); in YAML configs, `model.init_args.<name>`.
The batch size is the datamodule's `train_batch_size` (reference 32; at least 2; a training set smaller than the
batch trains on batches of all its images, with a warning).
"""


def rows(cls: type, skip: tuple[str, ...] = ("self", "kwargs")) -> list[str]:
    """One markdown row per constructor argument of ``cls``: name, default, documentation."""
    docs = {param.arg_name: " ".join(param.description.split()) for param in parse(inspect.getdoc(cls)).params}
    lines = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name in skip:
            continue
        default = "" if parameter.default is inspect.Parameter.empty else f"`{parameter.default!r}`"
        text = docs.get(name, "").replace("``", "`").replace("|", "/")
        lines.append(f"| `{name}` | {default} | {text} |")
    return lines


def main() -> str:
    """The page."""
    table = ["| argument | default | meaning |", "|---|---|---|"]
    parts = [HEADER, "## DeSTSeg and PFADSeg", "", *table, *rows(TwoStageTraining), ""]
    parts += ["## PFADSeg's own (its design is inferred: see [pfadseg.md](pfadseg.md))", "", *table, *rows(PFADSeg)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(main(), end="")
