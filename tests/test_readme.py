"""README.md tells the truth: every ```python block runs as written (offline, tiny models, the Hub faked by
``hub_cache``), every ``hf-debias`` command in its ```bash blocks parses, and the ``--debias`` choices it names are
the method registry's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hf_debias import available_methods

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(text: str, language: str) -> list[tuple[str, str]]:
    """``(section heading, code)`` for every fenced block in ``language``, in README order."""
    blocks, heading, code = [], "", None
    for line in text.splitlines():
        if code is not None:
            if line.strip() == "```":
                blocks.append((heading, "\n".join(code)))
                code = None
            else:
                code.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.strip() == f"```{language}":
            code = []
    return blocks


def sections() -> dict[str, list[str]]:
    """The python blocks grouped by section; a block may use the names of an earlier block of its section."""
    grouped: dict[str, list[str]] = {}
    for heading, code in code_blocks(README.read_text(), "python"):
        grouped.setdefault(heading, []).append(code)
    return grouped


SECTIONS = sections()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for every section, in README order (the Hub section reads the CAV the RR-ClArC one saved), with
    the Hub replaced by a local fake."""
    from hub_cache import FakeHub, offline_cache

    root = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        hub = FakeHub(offline_cache(monkeypatch, root))
        with hub.patch():
            yield root, hub


def test_the_readme_has_python_snippets_in_the_expected_sections():
    assert {"The transformers Trainer: one flag", "A plain PyTorch / timm loop", "Choosing the bottleneck layer",
            "The penalty as a function", "RR-ClArC: from example images to a correction",
            "The Hugging Face Hub: push corrected models and CAVs, load them by name", "Group metrics"} <= set(SECTIONS)


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_python_snippets_run_as_written(heading, workdir, capsys):
    root, hub = workdir
    namespace: dict = {"__name__": "__readme__"}
    for code in SECTIONS[heading]:
        exec(compile(code, f"README.md [{heading}]", "exec"), namespace)
    out = capsys.readouterr().out
    if heading.startswith("The transformers Trainer"):
        unbiased, worst = (float(value) for value in out.split()[-2:])
        assert 0.0 <= worst <= unbiased <= 1.0
        assert (root / "out" / "checkpoint-16").is_dir()  # 1,000 images at batch 64
    elif heading.startswith("RR-ClArC"):
        assert (root / "ruler_cav" / "cav.safetensors").is_file() and "concept='ruler'" in out
        assert namespace["cav"].quality["auc"] > 0.9  # the stand-in concept is easy to detect
    elif heading.startswith("Vision transformers"):
        assert out.split("\n")[:2] == ["patch_embed none (spatial, 16 positions)", "finite_difference"]
    elif heading.startswith("The Hugging Face Hub"):
        assert [commit["repo_id"] for commit in hub.commits] == ["my-org/resnet18-no-ruler", "my-org/skin-cavs"]
        assert (root / "resnet18-no-ruler" / "debias_config.json").is_file()
    elif heading == "Group metrics":
        assert out.split() == ["0.0", "0.5"]  # class 0 with bias 1 is always wrong; 1 of 2 conflicting is right


def commands(text: str) -> list[list[str]]:
    """Every ``hf-debias ...`` command of the bash blocks, line continuations joined, comments dropped."""
    found = []
    for _, code in code_blocks(text, "bash"):
        for line in code.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            for start, token in enumerate(tokens):
                if token in ("hf-debias", "hf_debias.cli"):
                    found.append(tokens[start + 1:])
    return found


def test_every_command_line_in_the_readme_parses():
    from transformers import HfArgumentParser

    from hf_debias.cli import build_parser
    from hf_debias.cli.train import DataArguments, ModelArguments
    from hf_debias.trainer import DebiasTrainingArguments

    lines = [tokens for tokens in commands(README.read_text()) if "--help" not in tokens]
    assert {tokens[0] for tokens in lines} == {"demo", "layers", "cav", "train", "sweep", "compare"}
    train = HfArgumentParser((ModelArguments, DataArguments, DebiasTrainingArguments))
    for tokens in lines:
        if tokens[0] == "train":
            train.parse_args(tokens[1:])  # the flags exist and their values parse (a bad one exits)
        elif tokens[0] in ("sweep", "compare"):
            from hf_debias.cli import compare, sweep

            (sweep if tokens[0] == "sweep" else compare).build_parser().parse_args(tokens[1:])
        else:
            build_parser().parse_args(tokens)


def test_the_debias_choices_in_the_readme_are_the_registry():
    choices = "{" + ",".join(["none", *available_methods()]) + "}"
    named = re.findall(r"--debias \{[^}]*\}", README.read_text())
    assert named and set(named) == {f"--debias {choices}"}


def test_every_promise_names_tests_that_exist():
    """The README's Promises section cites its tests as ``file.py::Class::test``, ``Class::test`` (in
    test_adversarial.py) or ``::test`` (the previous reference's file and class); each must exist, so a promise
    cannot outlive the test that checks it."""
    text = README.read_text()
    promises = text[text.index("#### Promises"):]
    promises = promises[:promises.index("\n#", 1)]
    cited = re.findall(r"\*\(([^)]*)\)\*", promises.replace("\n", " "))
    assert len(cited) >= 8
    tests = Path(__file__).parent
    checked = 0
    for group in cited:
        file, owner = "test_adversarial.py", None
        for reference in (part.strip() for part in group.split(",")):
            parts = reference.split("::")
            if parts[0].endswith(".py"):
                file, owner, parts = parts[0], None, parts[1:]
            elif parts[0]:  # a bare class: the adversarial suite's
                file, owner, parts = "test_adversarial.py", parts[0], parts[1:]
            else:
                parts = parts[1:]
            if parts and not parts[0].startswith("test_"):
                owner, parts = parts[0], parts[1:]
            source = (tests / file).read_text()
            if owner is not None:
                assert f"class {owner}" in source, f"{file} has no class {owner}"
            for name in parts:
                assert f"def {name}(" in source, f"{file} has no test {name}"
                checked += 1
    assert checked >= 15
