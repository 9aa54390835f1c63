"""Faults a user meets: each one line on stderr with its exit code, found before heavy work where
it can be, and a run's output whole or not at all (a full disk, a folder that cannot take it).
Real subprocesses, a real small filesystem where the machine allows one. Ctrl-C and SIGTERM:
``test_interrupts.py``."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from faults_common import QUICK, assert_one_error, assert_whole_result, gencompress, snapshot

# What TensorFlow, absl and CUDA print at start-up when nothing captures it.
TF_NOISE = ("cuInit", "cudart_stub", "oneDNN", "absl::InitializeLog", "TF-TRT", "computation placer", "rebuild TensorFlow")


# ----------------------------------------------------------------------------- the output folder


def _unwritable(folder: Path):
    """Make ``folder`` refuse new files: permissions, or for root (whom permissions do not stop)
    the immutable attribute. ``None`` when this machine allows neither."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    return None


@pytest.mark.parametrize("case", ["under a file", "a file", "not writable"])
def test_output_folder_faults_found_before_loading(dcgan_h5, tmp_path, case):
    (tmp_path / "afile").write_text("not a folder")
    undo = None
    if case == "under a file":
        out, message = tmp_path / "afile" / "out", f"output folder {tmp_path / 'afile' / 'out'} cannot be created: {tmp_path / 'afile'} is a file"
    elif case == "a file":
        out, message = tmp_path / "afile", f"output folder {tmp_path / 'afile'} is a file"
    else:
        undo = _unwritable(tmp_path / "locked")
        if undo is None:
            pytest.skip("cannot make a folder unwritable here (root without chattr)")
        out, message = tmp_path / "locked" / "out", f"cannot write into output folder {tmp_path / 'locked' / 'out'}"
    try:
        result = gencompress("quantize", dcgan_h5, "-o", out, *QUICK)
    finally:
        if undo:
            undo()
    assert_one_error(result, 5, message)
    assert "loading" not in result.stderr  # found before the model was even loaded
    assert not out.exists() or out.is_file()


def test_result_save_checks_the_folder_first(exported, tmp_path):
    from gencompress.errors import OutputError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile is a file"):
        exported["all"].save(tmp_path / "afile" / "out")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_failed_run_leaves_no_folder_it_created(dcgan_h5, tmp_path):
    out = tmp_path / "new" / "deeper"
    result = gencompress("quantize", dcgan_h5, "-o", out, "--seed", "-1", *QUICK)
    assert_one_error(result, 2, "--seed must be a whole number >= 0, got -1")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- a full disk


def _small_filesystem_runner():
    """``unshare`` arguments that give a shell script its own mount namespace where it may mount
    a tmpfs (root: -m; others: a user namespace too), or ``None`` when the machine refuses."""
    for args in (["unshare", "-m"], ["unshare", "-Urm"]) if os.geteuid() == 0 else (["unshare", "-Urm"],):
        if shutil.which(args[0]) is None:
            return None
        probe = subprocess.run([*args, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
        if probe.returncode == 0:
            return args
    return None


@pytest.mark.slow  # test_full_disk_while_staging is the same path, injected, in a second
def test_full_disk_on_a_real_small_filesystem(dcgan_h5, tmp_path):
    """The output on a tmpfs with 16 KiB free: the probe fits, the result does not. The previous
    result stays byte for byte, no staging folder stays; the scratch folder full too."""
    runner = _small_filesystem_runner()
    if runner is None:
        pytest.skip("no mount namespace here: test_full_disk_while_staging injects ENOSPC instead")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        set -u
        G="{sys.executable} -m gencompress"
        mount -t tmpfs -o size=256k tmpfs {mnt}
        $G export {dcgan_h5} -o {mnt}/out --format tflite {' '.join(QUICK)} >/dev/null 2>&1 || echo "previous run failed"
        sha256sum {mnt}/out/* > {tmp_path}/before
        dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null; truncate -s -16K {mnt}/filler
        $G export {dcgan_h5} -o {mnt}/out {' '.join(QUICK)} 2> {tmp_path}/stderr; echo "rc=$?"
        sha256sum {mnt}/out/* > {tmp_path}/after; ls -A {mnt}/out > {tmp_path}/listing
        rm {mnt}/filler; mkdir {mnt}/scratch; mount -t tmpfs -o size=8k tmpfs {mnt}/scratch
        TMPDIR={mnt}/scratch $G export {dcgan_h5} -o {mnt}/out2 --format onnx {' '.join(QUICK)} 2> {tmp_path}/stderr2; echo "rc2=$?"
        ls -A {mnt}/scratch > {tmp_path}/scratch_left; ls -A {mnt} > {tmp_path}/top
    """)
    done = subprocess.run([*runner, "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert "rc=5" in done.stdout, done.stdout + (tmp_path / "stderr").read_text()
    result = subprocess.CompletedProcess([], 5, "", (tmp_path / "stderr").read_text())
    assert_one_error(result, 5, "no space left to write into")
    assert "is as it was" in result.stderr
    assert (tmp_path / "after").read_text() == (tmp_path / "before").read_text()
    assert (tmp_path / "listing").read_text().split() == ["dcgan.float32.tflite", "report.html", "report.json", "report.md"]
    # The scratch folder full: one line, the machine's fault (5), nothing left in it.
    assert "rc2=5" in done.stdout, done.stdout + (tmp_path / "stderr2").read_text()
    assert_one_error(subprocess.CompletedProcess([], 5, "", (tmp_path / "stderr2").read_text()), 5, "no space left")
    assert (tmp_path / "scratch_left").read_text() == ""
    assert "out2" not in (tmp_path / "top").read_text().split()


def test_full_disk_while_staging(exported, tmp_path, monkeypatch):
    """ENOSPC injected on the second file copied into the staging folder (the same code path as
    a real full disk, on any machine): the previous result stays, no staging folder stays."""
    from gencompress import artifacts
    from gencompress.errors import OutputError

    out = tmp_path / "out"
    exported["tflite"].save(out)
    before = snapshot(out)
    copies = []

    def copyfile(src, dst):
        copies.append(dst)
        if len(copies) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return shutil.copyfile(src, dst)

    monkeypatch.setattr(artifacts.shutil, "copyfile", copyfile)
    with pytest.raises(OutputError, match="no space left to write into .*is as it was"):
        exported["all"].save(out)
    assert len(copies) == 2
    assert snapshot(out) == before


def test_disk_full_recognised_through_converter_errors():
    from gencompress.errors import ConversionError, disk_full

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise ConversionError("TFLite int8 conversion failed") from exc
    except ConversionError as wrapped:
        assert disk_full(wrapped)
    assert disk_full(ConversionError("tf2onnx: write failed: No space left on device"))
    assert not disk_full(ConversionError("no int8 kernel for PRELU"))


# ----------------------------------------------------------------------------- broken models and options


def _truncate_variables(folder: Path):
    data = next((folder / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


# The Keras 3 export exited 2 cleanly before: the comparison case, slow-marked.
@pytest.mark.parametrize("kind", ["tf-keras SavedModel", pytest.param("Keras 3 export", marks=pytest.mark.slow)])
def test_truncated_savedmodel_one_line(keras, tmp_path, kind):
    from conftest import build_dcgan

    folder = tmp_path / "generator"
    if kind == "tf-keras SavedModel":
        build_dcgan(keras).save(folder, save_format="tf")
    else:
        code = f"import keras; z = keras.Input((8,)); keras.Model(z, keras.layers.Dense(4, activation='tanh')(z)).export({str(folder)!r})"
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    _truncate_variables(folder)
    result = gencompress("export", folder, "-o", tmp_path / "out", *QUICK)
    assert_one_error(result, 2, "Read less bytes than requested")
    assert not (tmp_path / "out").exists()


def test_string_input_refused_at_load(keras, tmp_path):
    word = keras.Input((1,), dtype="string", name="word")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c"])(word)
    out = keras.layers.Dense(16, activation="tanh")(keras.layers.Flatten()(keras.layers.Embedding(5, 4)(ids)))
    keras.Model(word, out).save(tmp_path / "text.keras")
    result = gencompress("export", tmp_path / "text.keras", "-o", tmp_path / "out", *QUICK)
    assert_one_error(result, 2, "input 'word' holds strings: gencompress handles numeric inputs and outputs only")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["quantize", "{model}", "--seed", "-1"], 2, "--seed must be a whole number >= 0, got -1"),
        (["quantize", "{model}", "--int8-io", "--mode", "float16"], 2, "--int8-io applies to int8 and int16x8 artifacts"),
        (["quantize", "{model}", "--mode", "int4"], 2, "Invalid value for '--mode': int4 (choose from"),
        (["quantize", "{model}", "--no-such-option"], 2, "No such option '--no-such-option'"),
        (["quantize", "{model}", "--threads", "many"], 2, "Invalid value for '--threads': 'many' is not a valid integer"),
        (["squash", "{model}"], 2, "No such command 'squash'"),
        (["quantize"], 2, "Missing argument 'MODEL'"),
    ],
)
def test_option_errors_one_format(dcgan_h5, tmp_path, args, code, message):
    """Click's own option errors read like ours: one ``gencompress: error:`` line, exit 2."""
    result = gencompress(*[a.format(model=dcgan_h5) for a in args], "-o", tmp_path / "out")
    assert_one_error(result, code, message)
    assert "loading" not in result.stderr and not (tmp_path / "out").exists()


def test_help_still_works():
    for args in (["--help"], ["quantize", "--help"], []):
        result = gencompress(*args)
        assert "Usage: gencompress" in result.stdout + result.stderr and "error" not in result.stderr
        assert result.returncode == (0 if args else 2)


def test_few_calibration_samples_said_on_terminal_and_report(dcgan_h5, tmp_path):
    np.save(tmp_path / "ten.npy", np.random.default_rng(0).standard_normal((10, 8)).astype("float32"))
    result = gencompress("export", dcgan_h5, "-o", tmp_path / "out", "--format", "tflite", "--calibration", tmp_path / "ten.npy", "--latency-runs", "3")
    assert result.returncode == 0, result.stderr
    said = "ten.npy holds 10 samples: 8 calibrate and 2 are held out (not 200 and 64)"
    assert said in result.stdout
    assert any(said in n for n in json.loads((tmp_path / "out" / "report.json").read_text())["notes"])


# ----------------------------------------------------------------------------- noise, modes, one result per folder


def _small_models(keras, folder: Path, kind: str) -> Path:
    from conftest import build_dcgan

    if kind == "tf-keras SavedModel":
        build_dcgan(keras).save(folder / "savedmodel", save_format="tf")
        return folder / "savedmodel"
    code = f"import keras; z = keras.Input((8,), name='z'); keras.Model(z, keras.layers.Dense(4, activation='tanh')(z)).save({str(folder / 'k3.keras')!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return folder / "k3.keras"


# The SavedModel is the case that showed noise (tf_keras imported TensorFlow before gencompress
# set its environment); the other formats load through the same start-up and are slow-marked.
@pytest.mark.parametrize("kind", ["tf-keras SavedModel", pytest.param("Keras 3 .keras", marks=pytest.mark.slow), pytest.param(".h5", marks=pytest.mark.slow)])
def test_tensorflow_start_up_noise_stays_off_the_terminal(keras, dcgan_h5, tmp_path, kind):
    model = dcgan_h5 if kind == ".h5" else _small_models(keras, tmp_path, kind)
    result = gencompress("inspect", model, "--no-int8-check")
    assert result.returncode == 0, result.stderr
    assert "parameters:" in result.stdout
    noise = [line for line in result.stderr.splitlines() if any(n in line for n in TF_NOISE)]
    assert not noise, f"{model.name}: {noise}"


def test_saved_files_follow_the_umask(exported, tmp_path):
    """Every file ``Result.save`` writes gets the mode an ordinary ``open()`` would (umask 027:
    0640, a new folder 0750), not the 0600 of the temporary file it was written through."""
    previous = os.umask(0o027)
    try:
        out = exported["all"].save(tmp_path / "out")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert {"report.json", "report.md", "dcgan.float32.tflite", "dcgan.float32.onnx"} <= set(modes) and set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


@pytest.mark.slow
def test_every_written_file_follows_the_umask(dcgan_h5, tmp_path):
    """A distilled run writes artifacts, a saved model, a picture and both reports: all get the
    user's umask (027 here: 0640 files, a 0750 folder), none the 0600 of a temporary file."""
    out = tmp_path / "out"
    result = gencompress("distill", dcgan_h5, "-o", out, "--width", "0.5", "--steps", "4", "--eval-every", "2",
                         "--format", "tflite", *QUICK, umask=0o027)
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(out))
    assert {"dcgan-student.h5", "samples.png", "report.json", "report.md", "dcgan-student.float32.tflite"} <= set(names)
    modes = {n: stat.S_IMODE((out / n).stat().st_mode) for n in names}
    assert modes == {n: 0o640 for n in names}
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


def test_a_new_result_replaces_the_previous_one_whole(exported, tmp_path):
    out = tmp_path / "out"
    exported["all"].save(out)
    (out / "my-notes.txt").write_text("the user's own file")
    assert {"dcgan.float32.onnx", "dcgan.float32.tflite"} <= set(os.listdir(out))
    exported["tflite"].save(out)
    assert_whole_result(out, "export", others=["my-notes.txt"])
    assert not (out / "dcgan.float32.onnx").exists()
    # A report from before ``files`` existed lists its artifacts: those go too.
    exported["all"].save(out)
    report = json.loads((out / "report.json").read_text())
    del report["files"]
    (out / "report.json").write_text(json.dumps(report))
    exported["tflite"].save(out)
    assert sorted(os.listdir(out)) == ["dcgan.float32.tflite", "my-notes.txt", "report.html", "report.json", "report.md"]


def test_someone_elses_report_is_left_alone(exported, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"files": ["keep.bin"], "artifacts": [{"path": "keep.bin"}]}))
    (out / "keep.bin").write_bytes(b"1")
    exported["tflite"].save(out)
    assert (out / "keep.bin").exists()


def test_staging_folders_of_dead_runs_are_removed(exported, tmp_path):
    from gencompress.artifacts import STAGING_PREFIX

    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f"{STAGING_PREFIX}{dead.pid}-abc").mkdir(parents=True)
    (out / f"{STAGING_PREFIX}{dead.pid}-abc" / "half.tflite").write_bytes(b"half")
    (out / f"{STAGING_PREFIX}1-live").mkdir()  # pid 1 is alive: another run's, left alone
    exported["tflite"].save(out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)) == [f"{STAGING_PREFIX}1-live"]
