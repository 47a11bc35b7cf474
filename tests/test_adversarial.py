"""The adversarial suite: what an attacker or a careless user would try against saves, loads and pushes, and what
must come out — the right model, or a clear error; never a silently wrong result, never anything from outside.

Groups: ``TestSilentResults`` (a wrong model that loads without a word), ``TestFaults`` (a save interrupted at every
step, a training process killed with SIGKILL while it writes checkpoints), ``TestHostileFiles`` (repos that try to
run code or read outside their folder), ``TestSecrets`` (tokens), ``TestBadInput`` (what a push sends, what a save
records). Offline and on the CPU, with tiny models.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification, TimmWrapperForImageClassification

import hf_debias
from hf_debias import CAV, DebiasModel, EnDConfig, PClArCConfig, RRClArCConfig, get_debias_model, load_model
from hf_debias.hub import PushError, atomic, push_cavs_to_hub, save_cavs
from hub_cache import FakeHub, offline_cache, publish
from test_hub import BATCH, logits, random_cav, timm_model, timm_wrapper_model, vit_model

REFUSED = (ValueError, FileNotFoundError)
"""What a refusal raises: a clear error, never a crash deep inside torch."""


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return offline_cache(monkeypatch, tmp_path)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # EnD's portable-default notes, push's skipped files
        yield


def corrected(kind: str, seed: int = 0):
    """A corrected test_resnet: ``guarded`` changes the forward pass (EnD normalised), ``plain`` does not."""
    model = timm_model()
    torch.manual_seed(seed)
    with torch.no_grad():
        model.fc.weight.add_(torch.randn_like(model.fc.weight))
    config = EnDConfig(layer="layer2", normalize_forward=True) if kind == "guarded" else \
        RRClArCConfig(cav=random_cav(48, "layer2", seed=seed + 1), lamb=10.0, freeze="none")
    return get_debias_model(model, config).eval()


def outcome(folder: Path, candidates: dict[str, torch.Tensor]) -> str:
    """Which candidate ``load_model(folder)`` reproduces, or ``"refused"``; anything else fails the test."""
    try:
        loaded = load_model(folder)
    except REFUSED as err:
        assert str(err), "a refusal must say why"
        return "refused"
    out = logits(loaded)
    for name, expected in candidates.items():
        if torch.allclose(out, expected, rtol=0, atol=1e-5):
            return name
    raise AssertionError(f"{folder} loaded as a model that is neither of {sorted(candidates)}")


def plain_outcome(folder: Path, candidates: dict[str, torch.Tensor]) -> str:
    """The same for plain timm: it must refuse, or build one of the candidates."""
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    except Exception:  # timm's own errors: a refusal
        return "refused"
    out = logits(model)
    for name, expected in candidates.items():
        if torch.allclose(out, expected, rtol=0, atol=1e-5):
            return name
    raise AssertionError(f"plain timm built {folder} as a model that is neither of {sorted(candidates)}")


# =========================================================================== silent results
class TestSilentResults:
    def test_a_guarded_config_without_its_debias_config_is_refused_not_loaded_plainly(self, tmp_path):
        model = corrected("guarded")
        model.save_pretrained(tmp_path / "saved")
        (tmp_path / "saved" / "debias_config.json").unlink()  # what a kill -9 between two writes used to leave
        with pytest.raises(ValueError, match="debias_config.json is missing.*uncorrected"):
            load_model(tmp_path / "saved")
        with pytest.raises(RuntimeError, match="load it with hf_debias.load_model"):
            timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True)

    def test_a_second_save_leaves_none_of_the_first_saves_files(self, tmp_path, cache):
        folder = tmp_path / "saved"
        first = get_debias_model(vit_model(), PClArCConfig(cav=random_cav(32, "vit.layers.0", pooling="cls")))
        first.save_pretrained(folder)
        assert {"hf_debias_model.safetensors", "cav"} <= {p.name for p in folder.iterdir()}
        (folder / "notes.txt").write_text("mine")
        second = get_debias_model(vit_model(), EnDConfig(layer="vit.layers.1", normalize_forward=False)).eval()
        with torch.no_grad():
            second.model.classifier.weight.mul_(-1)
        second.save_pretrained(folder)
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md", "config.json", "debias_config.json", "model.safetensors", "notes.txt"]
        assert (folder / "notes.txt").read_text() == "mine"  # not ours: left alone
        torch.testing.assert_close(logits(load_model(folder)), logits(second), rtol=0, atol=1e-6)
        hub = FakeHub(cache)
        with hub.patch():
            hf_debias.push_folder(folder, "org/second")
        assert hub.commits[0]["files"] == ["README.md", "config.json", "debias_config.json", "model.safetensors"]

    @pytest.mark.parametrize("swapped", ["model.safetensors", "config.json"])
    def test_files_that_disagree_with_debias_config_are_refused_by_name(self, tmp_path, swapped):
        corrected("plain", seed=0).save_pretrained(tmp_path / "a")
        corrected("plain", seed=5).save_pretrained(tmp_path / "b")
        if swapped == "config.json":  # one byte of whitespace is enough
            text = (tmp_path / "a" / swapped).read_text()
            (tmp_path / "a" / swapped).write_text(text.replace('"num_classes": 3', '"num_classes":3'))
        else:  # the weights of another save
            shutil.copyfile(tmp_path / "b" / swapped, tmp_path / "a" / swapped)
        with pytest.raises(ValueError, match=rf"changed \['{swapped}'\].*Nothing was loaded"):
            load_model(tmp_path / "a")
        (tmp_path / "a" / "cav" / "cav.safetensors").unlink()
        with pytest.raises(ValueError, match=r"missing \['cav/cav.safetensors'\]"):
            load_model(tmp_path / "a")

    def test_a_nan_clean_mean_is_refused_instead_of_giving_nan_logits(self, tmp_path):
        model = get_debias_model(timm_model(), PClArCConfig(cav=random_cav(48, "layer2")))
        model.save_pretrained(tmp_path / "saved")
        path = tmp_path / "saved" / "cav" / "cav_config.json"
        path.write_text(path.read_text().replace('"clean_mean": -1.0', '"clean_mean": NaN'))
        with pytest.raises(ValueError, match=r"cav_config.json.*NaN.*finite"):
            CAV.from_pretrained(tmp_path / "saved" / "cav")
        path.write_text(path.read_text().replace('"clean_mean": NaN', '"clean_mean": "1"'))
        with pytest.raises(ValueError, match=r"cav_config.json: field 'clean_mean' must be a finite number"):
            CAV.from_pretrained(tmp_path / "saved" / "cav")
        with pytest.raises(ValueError, match="clean_mean"):
            random_cav(8, "layer2").clean_mean = float("nan")

    @pytest.mark.parametrize(("edit", "message"), [
        ({"allow_cav_mismatch": "false"}, "allow_cav_mismatch must be True or False, got 'false'"),
        ({"layer": None, "drop": "layer"}, r"lacks the fields \['layer'\]"),
        ({"lamb": "5"}, "lamb must be a number"),
        ({"base_model_name_or_path": 3}, "base_model_name_or_path must be a string"),
    ])
    def test_debias_config_fields_are_checked_and_named(self, tmp_path, edit, message):
        corrected("plain").save_pretrained(tmp_path / "saved")
        path = tmp_path / "saved" / "debias_config.json"
        data = json.loads(path.read_text())
        edit = dict(edit)
        if "drop" in edit:
            data.pop(edit.pop("drop"))
            edit.clear()
        path.write_text(json.dumps({**data, **edit}))
        with pytest.raises(ValueError, match=rf"debias_config.json.*{message}"):
            load_model(tmp_path / "saved")


# =========================================================================== faults
class _Crash(Exception):
    """A simulated crash: raised by the patched replace primitive."""


def _interrupted(monkeypatch, after: int):
    """Make ``hub.atomic``'s replace primitive crash on its ``after + 1``-th call."""
    calls = {"n": 0}
    real = os.replace

    def replace(source, destination):
        if calls["n"] >= after:
            raise _Crash(f"crash before move {after + 1}")
        calls["n"] += 1
        real(source, destination)

    monkeypatch.setattr(atomic, "_REPLACE", replace)
    return calls


def _count_moves(monkeypatch, save) -> int:
    calls = _interrupted(monkeypatch, 10 ** 6)
    save()
    monkeypatch.setattr(atomic, "_REPLACE", os.replace)
    return calls["n"]


class TestFaults:
    @pytest.mark.parametrize(("old_kind", "new_kind"), [("plain", "guarded"), ("guarded", "plain")])
    def test_save_pretrained_interrupted_after_every_move_loads_old_new_or_refuses(self, tmp_path, monkeypatch,
                                                                                    old_kind, new_kind):
        old, new = corrected(old_kind, seed=0), corrected(new_kind, seed=7)
        uncorrected = {"uncorrected_old": logits(old.model), "uncorrected_new": logits(new.model)}
        candidates = {"old": logits(old), "new": logits(new)}
        old.save_pretrained(tmp_path / "probe")
        moves = _count_moves(monkeypatch, lambda: new.save_pretrained(tmp_path / "probe"))
        assert moves >= 4  # barrier, weights, card, debias_config.json (+ cav, the final config.json)
        seen = set()
        for k in range(moves):
            folder = tmp_path / f"k{k}"
            old.save_pretrained(folder)
            _interrupted(monkeypatch, k)
            with pytest.raises(_Crash):
                new.save_pretrained(folder)
            monkeypatch.setattr(atomic, "_REPLACE", os.replace)
            result = outcome(folder, candidates)
            plain = plain_outcome(folder, {**candidates, **uncorrected})
            assert plain in ("refused", "old", "new"), (k, plain)  # plain timm never builds the uncorrected net
            seen.add(result)
            shutil.rmtree(folder)
        assert "refused" in seen and "old" in seen  # the interruptions really fell between the moves
        new.save_pretrained(tmp_path / "done")
        assert outcome(tmp_path / "done", candidates) == "new"

    def test_a_trainer_checkpoint_interrupted_after_every_move_loads_old_new_or_refuses(self, tmp_path,
                                                                                       monkeypatch):
        from test_trainer import arguments, tiny_dataset

        from hf_debias.trainer import DebiasTrainer

        batch = tiny_dataset(n=4, seed=2)[:]["pixel_values"]
        torch.manual_seed(0)
        trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3),
                                args=arguments(tmp_path / "run", end_normalize_forward="always"),
                                train_dataset=tiny_dataset())
        folder = tmp_path / "run" / "checkpoint-1"

        def current():
            with torch.no_grad():
                return trainer.model.eval()(batch).logits.clone()

        trainer._save(str(folder))
        old = current()
        with torch.no_grad():
            trainer.model.model.get_classifier().weight.add_(1.0)
        new = current()
        trainer._save(str(tmp_path / "probe"))
        moves = _count_moves(monkeypatch, lambda: trainer._save(str(tmp_path / "probe")))
        assert moves >= 4
        for k in range(moves):
            _interrupted(monkeypatch, k)
            with pytest.raises(_Crash):
                trainer._save(str(folder))
            monkeypatch.setattr(atomic, "_REPLACE", os.replace)
            try:
                loaded = load_model(folder)
            except REFUSED:
                trainer._save(str(folder))  # back to a complete checkpoint for the next k
                continue
            assert isinstance(loaded, DebiasModel)
            with torch.no_grad():
                out = loaded(batch).logits
            assert torch.allclose(out, old, atol=1e-5) or torch.allclose(out, new, atol=1e-5), k

    def test_kill_9_during_checkpoint_saves_never_leaves_an_uncorrected_model(self, tmp_path):
        script = tmp_path / "train.py"
        script.write_text(textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import timm, torch
            from test_trainer import arguments, tiny_dataset
            from hf_debias.trainer import DebiasTrainer
            torch.manual_seed(0)
            args = arguments(sys.argv[1], end_normalize_forward="always", save_strategy="steps", save_steps=1,
                             max_steps=10000, logging_steps=1000)
            trainer = DebiasTrainer(model=timm.create_model("simple_convnet", num_classes=3), args=args,
                                    train_dataset=tiny_dataset(n=16))
            trainer.train()
        """))
        rng = random.Random(13)
        checked = 0
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        for attempt in range(2):  # each start costs ~10 s of imports on 2 cores
            output = tmp_path / f"run{attempt}"
            process = subprocess.Popen([sys.executable, str(script), str(output)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 120
                while not list(output.glob("checkpoint-*")) and time.monotonic() < deadline:
                    assert process.poll() is None, "the training process died on its own"
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.5))
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            for folder in sorted(output.glob("checkpoint-*")):
                try:
                    loaded = load_model(folder)
                except REFUSED:
                    continue
                assert isinstance(loaded, DebiasModel) and loaded.method.alters_forward, folder
                with pytest.raises(RuntimeError, match="load it with hf_debias.load_model"):
                    timm.create_model(f"local-dir:{folder}", pretrained=True)
                checked += 1
        assert checked >= 2


# =========================================================================== hostile files
class TestHostileFiles:
    def test_a_config_with_auto_map_is_refused_at_once_and_runs_nothing(self, tmp_path, cache):
        corrected("plain").save_pretrained(tmp_path / "saved")
        marker = tmp_path / "ran"
        (tmp_path / "saved" / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        config = json.loads((tmp_path / "saved" / "config.json").read_text())
        config.update(model_type="evil", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                   "AutoModelForImageClassification": "modeling_evil.Evil"})
        (tmp_path / "saved" / "config.json").write_text(json.dumps(config))
        (tmp_path / "saved" / "debias_config.json").unlink()
        publish(cache, tmp_path / "saved", "org/evil")
        for source in ("org/evil", tmp_path / "saved"):
            with pytest.raises(ValueError, match="auto_map.*never runs a repo's code"):
                load_model(source)
        assert not marker.exists()

    @pytest.mark.parametrize("reference", ["/etc", "../outside", "cav/../../outside", "org/other-cavs", "."])
    def test_a_cav_reference_outside_the_snapshot_is_refused(self, tmp_path, cache, reference):
        outside = tmp_path / "outside"
        random_cav(48, "layer2").save_pretrained(outside)
        save_cavs({"ruler": random_cav(48, "layer2")}, tmp_path / "cavs")
        publish(cache, tmp_path / "cavs", "org/other-cavs")
        get_debias_model(timm_model(), RRClArCConfig(cav=random_cav(48, "layer2"))).save_pretrained(
            tmp_path / "repo" / "saved")
        path = tmp_path / "repo" / "saved" / "debias_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "cav": reference}))
        snapshot = publish(cache, tmp_path / "repo" / "saved", "org/hostile")
        shutil.copytree(outside, snapshot.parent / "outside")  # a folder next to the snapshot
        for source in ("org/hostile", tmp_path / "repo" / "saved"):
            with pytest.raises(ValueError, match="debias_config.json.*field 'cav'"):
                load_model(source)

    def test_a_cav_folder_that_is_a_symlink_out_of_the_folder_is_refused(self, tmp_path):
        get_debias_model(timm_model(), RRClArCConfig(cav=random_cav(48, "layer2"))).save_pretrained(
            tmp_path / "saved")
        random_cav(48, "layer2", seed=9).save_pretrained(tmp_path / "elsewhere")
        shutil.rmtree(tmp_path / "saved" / "cav")
        os.symlink(tmp_path / "elsewhere", tmp_path / "saved" / "cav")
        with pytest.raises(ValueError, match="outside"):
            load_model(tmp_path / "saved")

    @pytest.mark.parametrize("name", ["a/../../x", "../x", "/tmp/x", "a//b", "a\\b", "."])
    def test_subfolders_with_dotdot_absolute_or_empty_parts_are_refused_everywhere(self, tmp_path, cache, name):
        hub = FakeHub(cache)
        cav = random_cav(8, "layer2")
        (tmp_path / "folder").mkdir()
        cav.save_pretrained(tmp_path / "folder")
        with pytest.raises(ValueError, match="not a safe relative folder name"):
            save_cavs({name: cav}, tmp_path / "deep" / "cavs")
        with hub.patch():
            with pytest.raises(ValueError, match="not a safe relative folder name"):
                cav.push_to_hub("org/cavs", subfolder=name)
            with pytest.raises(ValueError, match="not a safe relative folder name"):
                hf_debias.push_folder(tmp_path / "folder", "org/cavs", path_in_repo=name)
        with pytest.raises(ValueError, match="not a safe relative folder name"):
            CAV.from_pretrained(tmp_path / "folder", subfolder=name)
        assert hub.commits == [] and not (tmp_path / "x").exists() and not (tmp_path / "deep").exists()

    @pytest.mark.parametrize("linked", ["model.safetensors", "config.json", "cav/cav_config.json"])
    def test_a_symlink_to_a_file_outside_is_refused_and_never_pushed(self, tmp_path, cache, linked):
        folder = tmp_path / "saved"
        get_debias_model(timm_model(), RRClArCConfig(cav=random_cav(48, "layer2"))).save_pretrained(folder)
        secret = tmp_path / "secret"
        shutil.copyfile(folder / linked, secret)  # the same bytes: only the link gives it away
        (folder / linked).unlink()
        os.symlink(secret, folder / linked)
        with pytest.raises(ValueError, match="outside"):
            load_model(folder) if linked != "cav/cav_config.json" else CAV.from_pretrained(folder / "cav")
        hub = FakeHub(cache)
        with hub.patch(), pytest.warns(UserWarning, match=rf"{linked} \(symlink\)"):
            hf_debias.push_folder(folder, "org/linked")
        assert linked not in hub.commits[0]["files"]

    def test_a_pickle_beside_the_weights_is_never_read_or_downloaded(self, tmp_path, cache, monkeypatch):
        marker = tmp_path / "unpickled"

        class Exploit:
            def __reduce__(self):
                return (Path(marker).write_text, ("ran",))

        folder = tmp_path / "saved"
        model = corrected("guarded")
        model.save_pretrained(folder)
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit()))
        (folder / "training_args.bin").write_bytes(pickle.dumps(Exploit()))
        publish(cache, folder, "org/pickled")
        import fnmatch

        import huggingface_hub

        asked = {}
        real_download = huggingface_hub.snapshot_download

        def download(repo_id, **kwargs):
            asked.update(kwargs)
            return real_download(repo_id, **kwargs)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
        torch.testing.assert_close(logits(load_model("org/pickled")), logits(model), rtol=0, atol=1e-6)
        for name in ("pytorch_model.bin", "training_args.bin", "modeling_x.py", "notes.txt"):  # never downloaded
            assert not any(fnmatch.fnmatch(name, pattern) for pattern in asked["allow_patterns"]), name
        torch.testing.assert_close(logits(load_model(folder)), logits(model), rtol=0, atol=1e-6)
        (folder / "model.safetensors").unlink()
        (folder / "debias_config.json").unlink()
        with pytest.raises(REFUSED):
            load_model(folder)
        assert not marker.exists()

    @pytest.mark.parametrize("name", ["config.json", "debias_config.json", "cav/cav_config.json"])
    @pytest.mark.parametrize("content", ["[1, 2]", "{not json", '"text"'])
    def test_json_that_is_not_an_object_is_refused_naming_the_file(self, tmp_path, name, content):
        folder = tmp_path / "saved"
        get_debias_model(timm_model(), RRClArCConfig(cav=random_cav(48, "layer2"))).save_pretrained(folder)
        (folder / "debias_config.json").write_text(json.dumps({
            key: value for key, value in json.loads((folder / "debias_config.json").read_text()).items()
            if key != "hf_debias_files"}))  # no record: the JSON check itself must catch it
        (folder / name).write_text(content)
        with pytest.raises(ValueError, match=rf"{name}.*(not valid JSON|must hold a JSON object)"):
            load_model(folder) if name != "cav/cav_config.json" else CAV.from_pretrained(folder / "cav")


# =========================================================================== secrets
class TestSecrets:
    @pytest.mark.parametrize("source", ["argument", "environment", "login"])
    def test_push_errors_never_show_the_token(self, tmp_path, cache, monkeypatch, source):
        import huggingface_hub

        secret = "hf_AdversarialSecret987"
        hub = FakeHub(cache, fail_with=ConnectionError(f"401 for Authorization: Bearer {secret}"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        if source == "environment":
            monkeypatch.setenv("HF_TOKEN", secret)
        if source == "login":
            monkeypatch.setattr(huggingface_hub, "get_token", lambda: secret)
        with hub.patch(), pytest.raises(PushError) as error:
            corrected("plain").push_to_hub("org/secret", save_directory=tmp_path / "to_push",
                                           token=secret if source == "argument" else None)
        assert secret not in str(error.value) and "***" in str(error.value)
        assert hub.deleted == ["org/secret"]  # the repo this push created does not stay behind, empty
        for path in (tmp_path / "to_push").rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path

    def test_a_failed_push_keeps_a_repo_that_existed_before(self, tmp_path, cache):
        hub = FakeHub(cache, fail_with=ConnectionError("boom"), existing={"org/kept"})
        with hub.patch(), pytest.raises(PushError, match="nothing was committed"):
            corrected("plain").push_to_hub("org/kept", save_directory=tmp_path / "to_push")
        assert hub.deleted == []

    def test_tokens_never_reach_saved_files_or_cards(self, tmp_path, cache, monkeypatch):
        secret = "hf_AdversarialSecret987"
        monkeypatch.setenv("HF_TOKEN", secret)
        hub = FakeHub(cache)
        with hub.patch():
            corrected("guarded").push_to_hub("org/clean", token=secret)
        assert all(secret.encode() not in content for content in hub.contents["org/clean"].values())


# =========================================================================== bad input
class TestBadInput:
    def test_a_push_sends_only_what_hf_debias_wrote(self, tmp_path, cache):
        folder = tmp_path / "reused"
        corrected("plain").save_pretrained(folder)
        for name in ("notes.md", "runs/events.out", "checkpoint-1/model.safetensors", "x.npy", "probe.joblib",
                     ".env", "optimizer.pt"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("not a model file")
        hub = FakeHub(cache)
        with hub.patch(), pytest.warns(UserWarning, match=r"Not pushing 7 file\(s\).*checkpoint-1/model.safetensors"):
            hf_debias.push_folder(folder, "org/reused")
        assert hub.commits[0]["files"] == ["README.md", "cav/cav.safetensors", "cav/cav_config.json", "config.json",
                                           "debias_config.json", "model.safetensors"]

    def test_a_local_base_model_is_recorded_by_folder_name_never_by_absolute_path(self, tmp_path):
        model = get_debias_model(timm_model(), EnDConfig(layer="layer2", normalize_forward=False,
                                                         base_model_name_or_path=str(tmp_path / "models" / "mine")))
        cav = random_cav(48, "layer2")
        cav.base_model_name_or_path = str(tmp_path / "models" / "mine")
        model.save_pretrained(tmp_path / "saved")
        save_cavs({"ruler": cav}, tmp_path / "cavs")
        assert json.loads((tmp_path / "saved" / "debias_config.json").read_text())["base_model_name_or_path"] == "mine"
        assert json.loads((tmp_path / "cavs" / "ruler" / "cav_config.json").read_text())[
            "base_model_name_or_path"] == "mine"
        for path in [*(tmp_path / "saved").rglob("*"), *(tmp_path / "cavs").rglob("*")]:
            assert not path.is_file() or str(tmp_path).encode() not in path.read_bytes(), path

    def test_timm_configs_carry_class_names_and_the_data_config(self, tmp_path, cache):
        names = ["cat", "dog", "bird"]
        model = timm_model()
        model.pretrained_cfg = {**model.pretrained_cfg, "label_names": names}
        get_debias_model(model, EnDConfig(layer="layer2", normalize_forward=False)).save_pretrained(tmp_path / "a")
        config = json.loads((tmp_path / "a" / "config.json").read_text())
        assert config["label_names"] == names
        assert {"mean", "std", "input_size"} <= set(config["pretrained_cfg"])
        publish(cache, tmp_path / "a", "org/named")
        auto = AutoModelForImageClassification.from_pretrained("org/named")
        assert [auto.config.id2label[i] for i in range(3)] == names

        wrapper = timm_wrapper_model()
        wrapper.config.id2label = dict(enumerate(names))
        hf_debias.hub.save_model(wrapper, tmp_path / "w")
        assert json.loads((tmp_path / "w" / "config.json").read_text())["label_names"] == names
        assert isinstance(load_model(tmp_path / "w"), TimmWrapperForImageClassification)

        model.pretrained_cfg = {**model.pretrained_cfg, "label_names": ["cat"]}
        with pytest.raises(ValueError, match="label_names'] has 1 names but the classifier has 3 classes"):
            hf_debias.hub.save_model(model, tmp_path / "b")

    def test_saving_into_the_working_directory_keeps_the_staging_folder_outside_it(self, tmp_path, monkeypatch):
        here = tmp_path / "here"
        here.mkdir()
        (here / "mine.txt").write_text("mine")
        monkeypatch.chdir(here)
        model = corrected("guarded")
        model.save_pretrained(".")
        model.save_pretrained("sub/..")  # the same folder again, spelled otherwise
        assert sorted(p.name for p in here.iterdir()) == ["README.md", "config.json", "debias_config.json",
                                                         "mine.txt", "model.safetensors"]
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
        torch.testing.assert_close(logits(load_model(".")), logits(model), rtol=0, atol=1e-6)

    def test_cav_repos_refuse_nested_subfolders_and_cards_list_them(self, tmp_path, cache):
        hub = FakeHub(cache)
        with hub.patch():
            push_cavs_to_hub("org/cavs", {"ruler": random_cav(8, "layer2", concept="ruler")})
        assert hub.commits[0]["files"] == ["README.md", "ruler/cav.safetensors", "ruler/cav_config.json"]
        assert "| `ruler` | ruler |" in ModelCard(hub.contents["org/cavs"]["README.md"].decode()).text
        with pytest.raises(ValueError, match="one folder name"):
            save_cavs({"a/b": random_cav(8, "layer2")}, tmp_path / "nested")
