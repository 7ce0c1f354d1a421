"""Issue 21 for the integer export: everything read back (checkpoints, bundles, arrays handed to the runtime)
is untrusted input, and every user mistake is one `error:` line with exit code 2, before anything is written.

Reuses tests/test_deploy.py's fixtures: the untrained digits run folder `run_dir` (config.json, status.json,
tiny_t0.pt, 4-bit weights) and the small dyadic networks.
"""
import json
import shutil

import numpy as np
import pytest
import torch

import export
from qsnn.deploy import bundle_files, convert as integer_export, runtime as deploy
from qsnn.errors import UserError
from qsnn.core.models import build_model
from test_deploy import INPUT_INFO, dyadic_net, run_dir  # noqa: F401  (run_dir is a fixture)


def files_under(folder):
    """Every path under folder, relative, sorted (to show that nothing was written)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def one_error_line(argv, capsys):
    """(exit code, the single stderr line) of export.main; fails if stderr is not exactly one line."""
    code = export.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return code, lines[0]


def folder_config(run_dir):
    """The "config" of a run folder's config.json."""
    return json.loads((run_dir / "config.json").read_text())["config"]


# ---------------------------------------------------------------- 1. a checkpoint from elsewhere in a run folder

def fp32_checkpoint(run_dir, tmp_path):
    """Another experiment's real best checkpoint: the same run trained with fp32 weights."""
    cfg = {**folder_config(run_dir), "num_bits": None}
    path = tmp_path / "fp32_t0.pt"
    torch.save({"model": build_model(cfg).state_dict(), "epoch": 1, "test_acc": 60.0, "config": cfg}, path)
    return path


def rewritten_checkpoint(run_dir, **changes):
    """The run's own checkpoint with some entries replaced (None: removed), written back in place."""
    path = run_dir / "tiny_t0.pt"
    checkpoint = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            checkpoint.pop(key)
        else:
            checkpoint[key] = value
    torch.save(checkpoint, path)


@pytest.mark.parametrize("case, expected", [
    ("fp32_over_4bit", "belongs to another experiment (num_bits=None (config.json: 4))"),
    ("other_beta", "belongs to another experiment (beta=0.5 (config.json: 0.994))"),
    ("no_config", "carries no config, so it cannot be checked against its folder's config.json"),
    ("model_not_a_dict", "its 'model' entry is list, not a dict of named tensors"),
    ("model_of_strings", "its 'model' entry is dict, not a dict of named tensors"),
    ("model_other_keys", "cannot load the checkpoint"),
    ("no_model", "lacks model"),
])
@pytest.mark.parametrize("out", [None, "bundle"])
def test_foreign_checkpoint_is_refused_before_anything_is_written(run_dir, tmp_path, capsys, case, expected, out):
    if case == "fp32_over_4bit":
        shutil.copyfile(fp32_checkpoint(run_dir, tmp_path), run_dir / "tiny_t0.pt")
    elif case == "other_beta":
        rewritten_checkpoint(run_dir, config={**folder_config(run_dir), "beta": 0.5})
    elif case == "no_config":
        rewritten_checkpoint(run_dir, config=None)
    elif case == "model_not_a_dict":
        rewritten_checkpoint(run_dir, model=[torch.zeros(3)])
    elif case == "model_of_strings":
        rewritten_checkpoint(run_dir, model={"weight": "not a tensor"})
    elif case == "model_other_keys":
        rewritten_checkpoint(run_dir, model={"fc.weight": torch.zeros(3, 3)})
    elif case == "no_model":
        rewritten_checkpoint(run_dir, model=None)
    before = files_under(tmp_path)
    argv = [str(run_dir)] + ([] if out is None else ["--out", str(tmp_path / out)])
    code, line = one_error_line(argv, capsys)
    assert code == 2 and expected in line and str(run_dir / "tiny_t0.pt") in line, line
    assert files_under(tmp_path) == before  # no bundle, no temporary file, in the run folder or at --out


def test_own_checkpoint_still_exports(run_dir, capsys):
    # The control for the refusals above: the run's own checkpoint passes every check.
    assert export.main([str(run_dir), "--membrane_bits", "8"]) == 0
    assert bundle_files.load_bundle(run_dir / "int_tiny_t0").meta["source"]["checkpoint"] == "tiny_t0.pt"
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- 2. a damaged or foreign bundle

@pytest.fixture(scope="module")
def saved_bundle(tmp_path_factory):
    """A real image bundle (conv, conv, linear; 4-bit weights, 16-bit membrane) saved as NAME.npz + NAME.json."""
    net, _ = dyadic_net("image")
    bundle = integer_export.export_model(net, "digits", 16, 1, 24, input_info=INPUT_INFO["image"],
                                         extra_meta={"num_steps": 4})
    folder = tmp_path_factory.mktemp("bundle")
    bundle_files.save_bundle(bundle, folder / "model")
    return folder / "model"


def set_layer(index, key, value):
    """A change to one layer's metadata."""
    return lambda meta, arrays: meta["layers"][index].__setitem__(key, value)


def set_meta(path, value):
    """A change to one metadata value, path like "input.scale"."""
    def change(meta, arrays):
        *parents, key = path.split(".")
        for parent in parents:
            meta = meta[parent]
        meta[key] = value
    return change


def set_array(name, make):
    """A change to one .npz array: make(old array) -> new array, or None to remove it."""
    def change(meta, arrays):
        value = make(arrays.pop(name))
        if value is not None:
            arrays[name] = value
    return change


def with_value(index, value):
    """A copy of an array with one element replaced."""
    def make(array):
        array = array.copy()
        array.flat[index] = value
        return array
    return make


BUNDLE_CASES = {
    "membrane_bits_too_wide": (set_meta("membrane_bits", 40), "json",
        "field membrane_bits is 40; must be within 4..32"),
    "membrane_bits_a_string": (set_meta("membrane_bits", "16"), "json",
        "field membrane_bits is '16'; must be an integer"),
    "membrane_bits_a_bool": (set_meta("membrane_bits", True), "json",
        "field membrane_bits is True; must be an integer"),
    "headroom_too_large": (set_meta("headroom_bits", 14), "json",
        "field headroom_bits is 14; must be within 1..membrane_bits-3"),
    "beta_shift_zero": (set_meta("beta_shift", 0), "json",
        "field beta_shift is 0; must be within 1..30"),
    "beta_multiplier_negative": (set_meta("beta_multiplier", -3), "json",
        "field beta_multiplier is -3; must be an integer within 0..16777216"),
    "threshold_nan": (set_meta("threshold", float("nan")), "json",
        "field threshold is nan; must be a finite number > 0"),
    "threshold_negative": (set_meta("threshold", -1.0), "json",
        "field threshold is -1.0; must be a finite number > 0"),
    "num_steps_zero": (set_meta("num_steps", 0), "json",
        "field num_steps is 0; must be an integer >= 1"),
    "num_steps_float": (set_meta("num_steps", 2.5), "json",
        "field num_steps is 2.5; must be an integer >= 1"),
    "input_missing": (lambda meta, arrays: meta.pop("input"), "json",
        "field input is missing"),
    "input_scale_zero": (set_meta("input.scale", 0), "json",
        "field input.scale is 0; must be a finite number > 0"),
    "input_kind_unknown": (set_meta("input.kind", "audio"), "json",
        "field input.kind is 'audio'; must be one of"),
    "max_code_negative": (set_meta("input.max_code", -1), "json",
        "field input.max_code is -1"),
    "layers_missing": (lambda meta, arrays: meta.pop("layers"), "json",
        "field layers is missing"),
    "layers_empty": (set_meta("layers", []), "json",
        "field layers is []; must be a non-empty list"),
    "layer_not_an_object": (lambda meta, arrays: meta["layers"].__setitem__(0, 7), "json",
        "field layers[0] is 7"),
    "layer_kind_unknown": (set_layer(0, "kind", "pool"), "json",
        "field layers[0].kind is 'pool'; must be one of conv, linear"),
    "last_layer_conv": (set_layer(2, "kind", "conv"), "json",
        "field layers[2].kind is conv in the last layer"),
    "conv_after_linear": (lambda meta, arrays: meta["layers"][0].update(kind="linear", pool=1, stride=1, padding=0),
        "json",
        "field layers[1].kind is conv after a linear layer"),
    "stride_not_pool": (set_layer(0, "stride", 3), "json",
        "field layers[0].stride is 3; must be an integer within 2..2"),
    "linear_pooled": (set_layer(2, "pool", 2), "json",
        "field layers[2].pool is 2; must be an integer within 1..1"),
    "pool_a_bool": (set_layer(0, "pool", True), "json",  # version 1's form, in a version-2 bundle
        "field layers[0].pool is True; must be an integer within 1..1024"),
    "linear_padded": (set_layer(2, "padding", 1), "json",
        "field layers[2].padding is 1; must be an integer within 0..0"),
    "padding_missing": (lambda meta, arrays: meta["layers"][1].pop("padding"), "json",
        "field layers[1].padding is missing"),
    "weight_bits_zero": (set_layer(1, "weight_bits", 0), "json",
        "field layers[1].weight_bits is 0; must be an integer within 1..16"),
    "unit_list_short": (set_layer(0, "membrane_unit", [1.0]), "json",
        "field layers[0].membrane_unit has 1 values; layer 0 has 16"),
    "array_name_not_text": (lambda meta, arrays: meta["layers"][1]["arrays"].__setitem__("bias", 3), "json",
        "field layers[1].arrays.bias is 3"),
    "num_classes_other": (set_meta("num_classes", 11), "json",
        "field num_classes is 11, but the last layer has 10 outputs"),
    "source_trial_negative": (set_meta("source", {"run_dir": "x", "trial": -1}), "json",
        "field source.trial is -1"),
    "array_missing": (set_array("layer1.bias", lambda a: None), "npz",
        "array 'layer1.bias' (layers[1].arrays.bias) is missing"),
    "weight_float": (set_array("layer0.weight", lambda a: a.astype(np.float32)), "npz",
        "array 'layer0.weight' holds float32"),
    "weight_unsigned": (set_array("layer0.threshold", lambda a: a.astype(np.uint32)), "npz",
        "array 'layer0.threshold' holds uint32"),
    "conv_weight_flat": (set_array("layer0.weight", lambda a: a.reshape(16, -1)), "npz",
        "array 'layer0.weight' has shape (16, 25); a conv layer's weights are [out, in, kh, kw]"),
    "conv_channels": (set_array("layer1.weight", lambda a: a[:, :8]), "npz",
        "array 'layer1.weight' takes 8 input channels, but layer 0 has 16 outputs"),
    "linear_inputs": (set_array("layer2.weight", lambda a: a[:, :-1]), "npz",
        "array 'layer2.weight' takes 1023 inputs, not a whole number of layer 1's 64 channel maps"),
    "threshold_short": (set_array("layer0.threshold", lambda a: a[:-1]), "npz",
        "array 'layer0.threshold' has shape (15,); layer 0 has 16 output channels"),
    "weight_beyond_bits": (set_array("layer0.weight", with_value(0, 100)), "npz",
        "array 'layer0.weight' spans"),
    "shift_beyond_limits": (set_array("layer1.shift", with_value(0, 100)), "npz",
        "layer 1 allows -40..30"),
    "threshold_beyond_membrane": (set_array("layer2.threshold", with_value(0, 2 ** 20)), "npz",
        "layer 2 allows 0..32767"),
    "bias_overflows_int64": (set_array("layer0.bias", with_value(0, 2 ** 62)), "npz",
        "could overflow the runtime's int64 currents"),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_damaged_bundle_is_one_error_naming_file_and_field(saved_bundle, tmp_path, case):
    change, where, expected = BUNDLE_CASES[case]
    meta = json.loads(saved_bundle.with_suffix(".json").read_text())
    with np.load(saved_bundle.with_suffix(".npz")) as data:
        arrays = {name: data[name] for name in data.files}
    change(meta, arrays)
    (tmp_path / "model.json").write_text(json.dumps(meta))
    np.savez(tmp_path / "model.npz", **arrays)
    with pytest.raises(UserError) as error:
        bundle_files.load_bundle(tmp_path / "model")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'model'}.{where}: ") and expected in message, message
    assert "\n" not in message and message.endswith("export it again")


def test_undamaged_bundle_loads_and_runs(saved_bundle):
    # The control for the refusals above: the bundle as written passes every check and runs.
    bundle = bundle_files.load_bundle(saved_bundle)
    spikes, saturated = deploy.run_bundle(bundle, np.zeros((2, 1, 28, 28), np.int64), bundle.meta["num_steps"])
    assert spikes.shape == (4, 2, 10) and saturated >= 0


# ---------------------------------------------------------------- 3. export.py's command line

@pytest.mark.parametrize("case, options, expected", [
    ("widths_comma", ["--widths", ","], "error: --widths ',' has an empty item"),
    ("widths_empty", ["--widths", ""], "error: --widths '' has an empty item"),
    ("widths_gap", ["--widths", "8,,16"], "error: --widths '8,,16' has an empty item"),
    ("widths_text", ["--widths", "8,twelve"], "error: --widths '8,twelve' is not a comma-separated list of integers"),
    ("widths_float", ["--widths", "8.5"], "is not a comma-separated list of integers"),
    ("widths_wide", ["--widths", "8,40"], "error: --widths 40 is not allowed; must be within 4..32"),
    ("widths_narrow", ["--widths", "3"], "error: --widths 3 is not allowed; must be within 4..32"),
    ("widths_headroom", ["--widths", "6", "--headroom_bits", "4"],
     "error: --headroom_bits 4 is not allowed with --widths 6; must be within 1..membrane_bits-3 (1..3 at 6 bits)"),
    ("headroom_for_membrane", ["--headroom_bits", "14"],
     "error: --headroom_bits 14 is not allowed with --membrane_bits 16; must be within 1..membrane_bits-3"),
    ("limit_zero", ["--widths", "8", "--limit", "0"], "error: --limit 0 is not allowed; give the number of test"),
    ("limit_negative", ["--widths", "8", "--limit", "-5"], "error: --limit -5 is not allowed"),
    ("limit_alone", ["--limit", "5"], "error: --limit only applies to the comparison; add --widths"),
    ("limit_text", ["--limit", "ten"], "error: argument --limit: invalid int value: 'ten' (see export.py --help)"),
    ("out_parent_missing", ["--out", "{tmp}/missing/model"], "the folder {tmp}/missing does not exist; create it"),
    ("out_is_folder", ["--out", "{tmp}"],
     "error: --out {tmp} is a folder; give a bundle name, such as --out {tmp}/model"),
    ("out_json_folder", ["--out", "{tmp}/taken"], "would write {tmp}/taken.json, which is a folder"),
    ("out_proc", ["--out", "/proc/model"], "error: --out /proc/model: the folder /proc is not writable"),
    ("trial_negative", ["--trial", "-1"], "error: --trial -1 is not allowed; trials are numbered from 0"),
    ("trial_absent", ["--trial", "7"], "trial 7 has no best checkpoint in {run} (tiny_t7.pt is missing); trials "
                                       "with one: 0; choose one with --trial"),
])
def test_export_options_are_refused_before_any_work(run_dir, tmp_path, capsys, monkeypatch, case, options,
                                                    expected):
    (tmp_path / "taken.json").mkdir()
    if case != "trial_absent":  # every other mistake is found before the run folder is even read
        monkeypatch.setattr(integer_export, "load_trial", lambda *args: pytest.fail("work started"))
    fill = {"{tmp}": str(tmp_path), "{run}": str(run_dir)}
    for key, value in fill.items():
        options = [option.replace(key, value) for option in options]
        expected = expected.replace(key, value)
    before = files_under(tmp_path)
    code, line = one_error_line([str(run_dir), *options], capsys)
    assert code == 2 and expected in line, line
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- 4. the NumPy runtime's Python API

@pytest.fixture(scope="module")
def image_bundle():
    """An in-memory image bundle: 1 x 28 x 28 inputs, pixel codes 0..16."""
    net, _ = dyadic_net("image")
    return integer_export.export_model(net, "digits", 16, 1, 24, input_info=INPUT_INFO["image"])


GOOD_CODES = np.zeros((2, 1, 28, 28), np.int64)


@pytest.mark.parametrize("call, expected", [
    (lambda b: deploy.input_codes(b, np.zeros((1, 28, 28))), "input_codes takes images [N, C, H, W]"),
    (lambda b: deploy.input_codes(b, np.zeros((2, 3, 28, 28))),
     "the input has 3 channel(s) (shape (2, 3, 28, 28)), but the bundle takes 1; give [..., 1, 28, 28] samples"),
    (lambda b: deploy.input_codes(b, np.zeros((2, 1, 32, 32))),
     "give the linear layer 1600 values per sample, but it takes 1024; give [..., 1, 28, 28] samples"),
    (lambda b: deploy.input_codes(b, np.zeros((2, 1, 4, 4))), "are too small for the bundle's convolutions"),
    (lambda b: deploy.input_codes(b, np.full((2, 1, 28, 28), np.nan)), "1568 NaN or infinite value(s) of 1568"),
    (lambda b: deploy.input_codes(b, np.where(np.eye(28) > 0, np.inf, 0.5).reshape(1, 1, 28, 28)),
     "28 NaN or infinite value(s)"),
    (lambda b: deploy.input_codes(b, np.full((1, 1, 28, 28), "x")), "the input holds <U1 values"),
    (lambda b: deploy.input_codes(b, [[0.5, 0.5], [0.5]]), "the input is not an array of numbers"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES.astype(np.float32), 4), "takes integer input codes, not float32"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES), "a static [N, C, H, W] input needs num_steps"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES, 0), "num_steps must be an integer of at least 1"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES, -3), "num_steps must be an integer of at least 1"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES, 2.5), "num_steps must be an integer of at least 1"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES, True), "num_steps must be an integer of at least 1"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES[None], 4), "brings its own time steps; leave num_steps None"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES[0], 4), "the input codes have shape (1, 28, 28)"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES[:0], 4), "no samples"),
    (lambda b: deploy.run_bundle(b, np.zeros((2, 2, 28, 28), np.int64), 4), "the input has 2 channel(s)"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES + 17, 4), "input codes span 17..17, but this bundle's pixel_codes"),
    (lambda b: deploy.run_bundle(b, GOOD_CODES - 1, 4), "take 0..16; make them with deploy.input_codes"),
])
def test_runtime_api_refuses_bad_inputs(image_bundle, call, expected):
    with pytest.raises(UserError) as error:
        call(image_bundle)
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_runtime_api_takes_good_inputs(image_bundle):
    # The control: real images in [0, 1] become codes 0..16 and run; 29 x 29 maps onto the same layers.
    codes = deploy.input_codes(image_bundle, np.linspace(0, 1, 2 * 28 * 28).reshape(2, 1, 28, 28))
    assert codes.min() == 0 and codes.max() == 16
    assert deploy.run_bundle(image_bundle, codes, 3)[0].shape == (3, 2, 10)
    assert deploy.run_bundle(image_bundle, np.zeros((1, 1, 29, 29), np.int64), np.int64(2))[0].shape == (2, 1, 10)


# ---------------------------------------------------------------- 5. progress of export.py --widths

def test_widths_show_progress(run_dir, capsys):
    assert export.main([str(run_dir), "--widths", "8,12", "--limit", "4"]) == 0
    captured = capsys.readouterr()
    assert "| integer, 8-bit membrane |" in captured.out and "(4 test samples)" in captured.out
    bar_lines = [line for line in captured.err.splitlines() if line.startswith("integer networks")]
    assert bar_lines and "2/2" in bar_lines[-1], captured.err  # one step per width, as plain lines in a file
    assert "\r" not in captured.err
