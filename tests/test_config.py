"""The config system: _base_ inheritance, overrides, strict schema, round trip."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitc.cli import main
from vitc.config import config_from_dict, dump_config, load_config, parse_override
from vitc.errors import VitcError


def write(path, text):
    path.write_text(text)
    return path


def test_base_inheritance_child_wins_and_lists_of_bases_merge_in_order(tmp_path):
    write(tmp_path / "a.yaml", "model: {name: vit_c_4gf, depth: 5, drop_path: 0.1}\n")
    write(tmp_path / "b.yaml", "model: {depth: 7}\n")
    child = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\nmodel: {image_size: 384}\n")
    cfg = load_config(child)
    assert (cfg.model.name, cfg.model.depth, cfg.model.drop_path, cfg.model.image_size) == (
        "vit_c_4gf", 7, 0.1, 384)


def test_base_path_is_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", "model: {width: 96}\n")
    child = write(tmp_path / "sub" / "child.yaml", "_base_: ../base.yaml\n")
    assert load_config(child).model.width == 96


def test_overrides_parse_yaml_scalars_lists_and_null():
    cfg = load_config(None, ["model.depth=3", "model.drop_path=1e-1", "model.act_checkpoint=true",
                             "model.stem_channels=[8, 16]", "model.stem_strides=[2, 2]", "model.width=null",
                             "audit.parity_tolerance=0.05"])
    assert cfg.model.depth == 3 and cfg.model.drop_path == 0.1 and cfg.model.act_checkpoint is True
    assert cfg.model.stem_channels == [8, 16] and cfg.model.width is None
    assert cfg.audit.parity_tolerance == 0.05


def test_overrides_apply_after_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "model: {depth: 5}\n")
    assert load_config(path, ["model.depth=9"]).model.depth == 9


def test_resolved_config_dumps_and_reloads_to_the_same_thing(tmp_path):
    cfg = load_config(None, ["model.name=vit_c_18gf", "model.stem_channels=[32, 64]",
                             "model.stem_strides=[2, 2]", "model.mlp_ratio=3.5"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_unknown_key_names_the_full_path_the_file_and_a_suggestion(tmp_path):
    path = write(tmp_path / "typo.yaml", "model: {widht: 192}\n")
    with pytest.raises(VitcError, match=r"unknown key 'model.widht' in .*typo.yaml \(did you mean 'model.width'\?\)"):
        load_config(path)


def test_key_in_the_wrong_section_suggests_its_full_path():
    with pytest.raises(VitcError, match=r"unknown key 'depth' .*did you mean 'model.depth'"):
        load_config(None, ["depth=3"])


def test_wrong_type_names_the_key_and_the_expected_type(tmp_path):
    path = write(tmp_path / "t.yaml", "model: {depth: twelve}\n")
    with pytest.raises(VitcError, match=r"'model.depth' in .*t.yaml: expected int, got 'twelve'"):
        load_config(path)


def test_bool_is_not_accepted_as_an_int():
    with pytest.raises(VitcError, match=r"'model.image_size'.*expected int"):
        load_config(None, ["model.image_size=true"])


def test_literal_value_gets_a_suggestion():
    with pytest.raises(VitcError, match=r"'model.stem'.*one of 'patchify', 'conv'.*got 'covn' \(did you mean 'conv'\?\)"):
        load_config(None, ["model.stem=covn"])


def test_list_items_are_type_checked_with_their_index():
    with pytest.raises(VitcError, match=r"'model.stem_channels\[1\]'.*expected int"):
        load_config(None, ["model.stem_channels=[8, x]"])


def test_missing_base_file_names_it_and_the_file_that_asked(tmp_path):
    path = write(tmp_path / "c.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(VitcError, match=r"config file not found: .*nowhere.yaml \(named in _base_ of .*c.yaml\)"):
        load_config(path)


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(VitcError, match="_base_ cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("item", ["model.depth", "=3", "model..depth=3", "model.depth=[1, 2"])
def test_malformed_override_is_rejected_with_an_example(item):
    with pytest.raises(VitcError, match=r"malformed override"):
        parse_override(item)


def test_cli_prints_config_errors_as_one_line_without_traceback(capsys):
    assert main(["audit", "vit_c_1gf", "model.depht=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("vitc: error: unknown key 'model.depht' in override 'model.depht=3' "
                           "(did you mean 'model.depth'?)")
    assert "Traceback" not in err


# Each bad value: the key it names in the one line `vitc train` prints before anything starts.
BAD_VALUES = [
    ("train.grad_accum=0", "'train.grad_accum'"),
    ("checkpoint.every_steps=0", "'checkpoint.every_steps'"),
    ("log.every_steps=0", "'log.every_steps'"),
    ("optim.base_lr=-1", "'optim.base_lr'"),
    ("train.micro_batch=0", "'train.micro_batch'"),
    ("model.name=vit_c_2gf", "model.name"),
    ("model.image_size=70", "model.image_size"),
    ("schedule.warmup_epochs=101", "schedule.warmup_epochs"),
    ("data.crop_scale=[0.9, 0.5]", "data.crop_scale"),
    ("data.hflip=1.5", "'data.hflip'"),
]


@pytest.mark.parametrize("override, key", BAD_VALUES)
def test_train_refuses_a_bad_value_in_one_line_and_creates_no_run_directory(override, key, tmp_path):
    config = write(tmp_path / "run.yaml", f"train: {{run_dir: {tmp_path / 'run'}}}\n")
    done = subprocess.run([sys.executable, "-m", "vitc.cli", "train", str(config), override],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitc: error: ") and key in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_out_of_range_value_names_key_value_range_and_file(tmp_path):
    path = write(tmp_path / "r.yaml", "optim: {betas: [0.9, 1.0]}\n")
    with pytest.raises(VitcError, match=r"'optim.betas' in .*r.yaml: expected a value >= 0 and < 1, got \[0.9, 1.0\]"):
        load_config(path)


def test_two_sections_of_one_name_are_refused_with_file_and_lines(tmp_path):
    path = write(tmp_path / "twice.yaml", "model: {name: vit_c_4gf}\ntrain: {micro_batch: 8}\nmodel: {depth: 3}\n")
    with pytest.raises(VitcError, match=r"twice.yaml:3: key 'model' appears twice \(first at line 1\)"):
        load_config(path)


def test_stem_strides_without_patch_size_derive_it_and_say_so(caplog):
    caplog.set_level("INFO", logger="vitc.config")
    cfg = load_config(None, ["model.name=vit_c_1gf", "model.stem_strides=[2, 2, 2, 1]"])
    assert cfg.model.patch_size is None
    assert "model.patch_size is 8: the product of model.stem_strides [2, 2, 2, 1]" in caplog.text
    with pytest.raises(VitcError, match=r"product of model.stem_strides \[2, 2, 2, 1\] is 8, but model.patch_size is 16"):
        load_config(None, ["model.name=vit_c_1gf", "model.stem_strides=[2, 2, 2, 1]", "model.patch_size=16"])


def test_every_shipped_run_config_loads():
    # run configs live one directory down; configs/sweeps holds sweep specs, configs/*.yaml tables
    configs = [p for p in Path(__file__).resolve().parents[1].glob("configs/*/*.yaml")
               if p.parent.name != "sweeps"]
    assert configs, "no configs shipped"
    for path in configs:
        load_config(path)


@pytest.mark.parametrize("command, content", [
    (["train"], b"model:\n  name: vit_c_1gf\xff\n"),  # not UTF-8
    (["sweep", "make"], b"models: {a: x.yaml\n"),  # a YAML syntax error in a sweep spec
    (["config", "show"], b"model: {depth: 3}\nmodel: {width: 64}\n"),  # a section given twice
])
def test_every_yaml_file_vitc_reads_fails_with_one_line_naming_it(command, content, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    extra = [str(tmp_path / "sweep")] if command == ["sweep", "make"] else []
    assert main([*command, str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vitc: error: {path}") and "Traceback" not in err, err
    if "not valid YAML" in err:  # the line, then the caret under the column
        first, source, caret = err.strip("\n").splitlines()
        assert first.startswith(f"vitc: error: {path}:2:1:") and caret.strip() == "^"
    else:
        assert len(err.strip().splitlines()) == 1
