"""Every input is someone else's data: a recipe carries what to do, never permission; files are
read within limits; names reach the terminal escaped; a run killed or short of memory leaves
nothing behind. Each case is built here from the smallest input that shows it."""

import gc
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from faults_common import QUICK, assert_one_error, gencompress, snapshot


def _no_scratch_left(tmpdir: Path):
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("gencompress-")] == []


@pytest.fixture
def tmpdir_env(tmp_path):
    """A private TMPDIR for the CLI subprocess: what its scratch folders leave can be seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder, {"TMPDIR": str(folder)}


# ----------------------------------------------------------------------------- a recipe is not permission


@pytest.fixture(scope="module")
def lambda_h5(keras, tmp_path_factory):
    """A model whose Lambda touches a marker file when its code runs (loading a trusted .h5 runs it)."""
    folder = tmp_path_factory.mktemp("lambda")
    marker = folder / "code-ran"
    z = keras.Input((8,), name="z")
    x = keras.layers.Lambda(lambda t, p=str(marker): (__import__("pathlib").Path(p).touch(), t * 2.0)[1], name="double")(z)
    keras.Model(z, keras.layers.Dense(4, activation="tanh", name="image")(x)).save(folder / "lam.h5")
    marker.unlink()  # building the model ran it once here
    return folder / "lam.h5", marker


def _lambda_recipe(folder: Path, model: Path) -> Path:
    recipe = folder / "lam.toml"
    recipe.write_text(
        f'version = 1\noutput = "out"\n[model]\npath = "{model}"\ntrust_code = true\n'
        '[calibration]\nsamples = 16\n[[steps]]\n[steps.export]\nformats = ["tflite"]\neval_samples = 8\nlatency_runs = 3\n'
    )
    return recipe


def test_a_recipe_or_report_cannot_turn_code_execution_on(lambda_h5, tmp_path):
    model, marker = lambda_h5
    recipe = _lambda_recipe(tmp_path, model)
    report = tmp_path / "colleague" / "report.json"  # someone else's report, replayed
    report.parent.mkdir()
    report.write_text(json.dumps({"schema_version": "1", "command": "export", "recipe": {
        "document": {"version": 1, "model": {"path": str(model), "trust_code": True}, "steps": [{"export": {}}]}}}))
    for source in (recipe, report):
        result = gencompress("run", source)
        assert_one_error(result, 2, "lam.h5 runs code from it (trust_code = true); a recipe or report cannot allow that by itself: "
                                    "pass --trust-code to `gencompress run`")
        assert not marker.exists() and not (tmp_path / "out").exists()
    # The API call is the same gate.
    from gencompress import recipe as recipes
    from gencompress.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="cannot allow that by itself"):
        recipes.run(recipes.load(recipe))
    assert recipes.code_files(recipes.load(recipe)) == [str(model)]
    assert not marker.exists()


def test_trust_code_on_the_run_command_line_allows_it(lambda_h5, tmp_path):
    model, marker = lambda_h5
    result = gencompress("run", _lambda_recipe(tmp_path, model), "--trust-code")
    assert result.returncode == 0, result.stderr
    assert "note: --trust-code: loading runs code from lam.h5, as the recipe asks" in result.stderr
    assert marker.exists()  # the Lambda ran: the permission came from the command line
    recorded = json.loads((tmp_path / "out" / "report.json").read_text())["recipe"]["document"]["model"]
    assert recorded["trust_code"] is True  # so replaying this report asks for --trust-code again


# ----------------------------------------------------------------------------- bad data: one line each


def _npy_header(shape, descr="<f4") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_array_files_are_checked_before_their_data_is_read(tmp_path):
    from gencompress.calibration import Calibration
    from gencompress.errors import CalibrationError
    from gencompress.model import TensorInfo

    z = [TensorInfo("z", (None, 8), "float32")]
    np.savez(tmp_path / "pickled.npz", z=np.array([{"a": 1}, None], dtype=object))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    # 4 TiB declared in an 80-byte file: np.load would try to allocate it before reading.
    (tmp_path / "huge.npy").write_bytes(_npy_header((2**20, 2**20)) + b"\0" * 16)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, "  # unclosed: numpy's parser raised TokenError
    header += b" " * (53 - len(header)) + b"\n"
    (tmp_path / "header.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 32)
    cases = {
        "pickled.npz": "pickled.npz (z.npy) holds Python objects (dtype object): loading them would unpickle code",
        "pickled.npy": "holds Python objects",
        "huge.npy": "is truncated: its header declares 1048576×1048576 float32 (4.0 TiB), the file holds 16 bytes",
        "broken.npz": "cannot read",
        "header.npy": "cannot read",
    }
    for name, message in cases.items():
        with pytest.raises(CalibrationError, match=None) as info:
            Calibration.file(tmp_path / name).sets(z, {}, 4, 2, seed=0)
        assert message in str(info.value), str(info.value)


def _png(width: int, height: int) -> bytes:
    """A PNG of ``width`` × ``height`` gray pixels with no pixel data: PIL reads the size first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def test_images_that_are_bombs_truncated_or_special(tmp_path):
    from PIL import Image

    from gencompress.calibration import Calibration
    from gencompress.errors import CalibrationError
    from gencompress.model import TensorInfo

    image = [TensorInfo("image", (None, 8, 8, 3), "float32")]

    def refused(folder) -> str:
        with pytest.raises(CalibrationError) as info:
            Calibration.images(folder).sets(image, {}, 2, 1, seed=0)
        return str(info.value)

    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "bomb.png").write_bytes(_png(20000, 20000))  # 57 bytes that declare 400 million pixels
    assert "bomb.png is too large to decode safely: Image size (400000000 pixels) exceeds limit" in refused(bomb)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(truncated / "a.png")
    data = (truncated / "a.png").read_bytes()
    (truncated / "a.png").write_bytes(data[: len(data) // 2])
    assert "cannot read image" in refused(truncated)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "a.png")
    assert "a.png is a FIFO (named pipe), not a file" in refused(fifo)


def test_an_input_too_large_for_memory_is_refused_before_allocating(keras):
    """A 20000×20000×3 input: noise calibration would draw terabytes of float64."""
    from gencompress.calibration import Calibration
    from gencompress.config import ExportConfig
    from gencompress.errors import ResourceError
    from gencompress.model import from_keras
    from gencompress.pipelines.session import prepare

    x = keras.Input((20000, 20000, 3), name="photo")
    model = from_keras(keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))), name="huge")
    with pytest.raises(ResourceError, match=r"input 'photo' \(20000×20000×3, 4.47 GiB a sample\) for 200 calibration and 64 held-out samples "
                                            r"needs about \d+\.\d TiB of memory; this machine has .* give fewer with --calibration-samples"):
        prepare(model, ExportConfig(), Calibration.noise())


# ----------------------------------------------------------------------------- special files, sizes, names


def test_a_fifo_is_refused_before_it_is_opened(dcgan_h5, tmp_path, tmpdir_env):
    from gencompress import recipe as recipes
    from gencompress.calibration import Calibration
    from gencompress.errors import CalibrationError, ModelLoadError
    from gencompress.model import load_model

    tmpdir, env = tmpdir_env
    fifo = tmp_path / "generator.h5"
    os.mkfifo(fifo)
    result = gencompress("export", fifo, "-o", tmp_path / "out", env=env, timeout=60)  # it used to wait forever
    assert_one_error(result, 2, "model")
    assert "generator.h5 is a FIFO (named pipe), not a file: gencompress reads regular files only" in result.stderr
    assert not (tmp_path / "out").exists()
    _no_scratch_left(tmpdir)
    with pytest.raises(ModelLoadError, match="is a FIFO"):
        load_model(fifo)
    for name in ("data.npy", "recipe.toml"):
        os.mkfifo(tmp_path / name)
    with pytest.raises(CalibrationError, match="data.npy is a FIFO"):
        Calibration.from_spec(str(tmp_path / "data.npy"))
    with pytest.raises(recipes.RecipeError, match="recipe.toml is a FIFO"):
        recipes.load(tmp_path / "recipe.toml")
    with pytest.raises(ModelLoadError, match="is a character device"):
        load_model(Path("/dev/zero"))


def test_a_keras_config_that_inflates_past_the_limit(keras, tmp_path):
    """A 70 KiB archive whose config.json inflates to 65 MiB: refused from the zip directory's
    declared size, before a byte is inflated."""
    from gencompress.errors import ModelLoadError
    from gencompress.limits import MAX_DOCUMENT_BYTES
    from gencompress.model import load_model

    z = keras.Input((4,), name="z")
    keras.Model(z, keras.layers.Dense(4, name="image")(z)).save(tmp_path / "small.keras")
    with zipfile.ZipFile(tmp_path / "small.keras") as src, zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                data = data[:-1] + b', "padding": "' + b" " * MAX_DOCUMENT_BYTES + b'"}'
            dst.writestr(info.filename, data)
    assert (tmp_path / "bomb.keras").stat().st_size < 200_000
    with pytest.raises(ModelLoadError, match="config.json inflates to 64 MiB, over the 64 MiB gencompress reads"):
        load_model(tmp_path / "bomb.keras")


def test_names_too_long_for_the_file_system(dcgan_h5, tmp_path, tmpdir_env):
    from gencompress.errors import InputError
    from gencompress.model import load_model

    tmpdir, env = tmpdir_env
    result = gencompress("export", dcgan_h5, "-o", tmp_path / ("a" * 300), env=env)
    assert_one_error(result, 2, "the part 'aaaa")
    assert "is 300 bytes: over the file system's 255-byte limit for one name" in result.stderr
    long_model = tmp_path / ("g" * 230 + ".h5")  # its artifacts ("<230 g>.float32.tflite") would pass 255 bytes
    shutil.copy(dcgan_h5, long_model)
    result = gencompress("export", long_model, "-o", tmp_path / "out", env=env)
    assert_one_error(result, 2, "is 230 bytes: the artifacts named after it would pass the file system's 255-byte limit")
    assert "loading" not in result.stderr and not (tmp_path / "out").exists()
    _no_scratch_left(tmpdir)
    with pytest.raises(InputError, match="give the model a name of at most 207 bytes"):
        load_model(long_model)


def test_a_name_made_too_long_is_refused_where_it_is_made(dcgan):
    """The library's own check where names are made (an in-memory model can be named anything)."""
    from conftest import make_session

    from gencompress.errors import InputError

    session = make_session(dcgan)
    try:
        with pytest.raises(InputError, match="is 258 bytes: over the file system's 255-byte limit"):
            session.add_file("x" * 246 + ".int8.tflite", b"data")
    finally:
        session.cache.close()


# ----------------------------------------------------------------------------- memory


def _limited(limit_bytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def test_an_address_space_too_small_for_tensorflow(dcgan_h5, tmp_path, tmpdir_env):
    """ulimit -v 1.5 GiB: TensorFlow hung (OpenBLAS start-up) or aborted (exit 134, no message)."""
    tmpdir, env = tmpdir_env
    result = subprocess.run([sys.executable, "-m", "gencompress", "export", str(dcgan_h5), "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **env}, preexec_fn=_limited(3 * 2**29))
    assert_one_error(result, 5, "the address-space limit (ulimit -v) is 1.5 GiB: TensorFlow needs at least 3.0 GiB")
    assert not (tmp_path / "out").exists()
    _no_scratch_left(tmpdir)


def test_a_model_too_large_for_the_address_space_limit(keras, tmp_path, tmpdir_env):
    """ulimit -v 6 GiB and a 20000×20000×3 input: one line naming the limit, -o as it was."""
    tmpdir, env = tmpdir_env
    x = keras.Input((20000, 20000, 3), name="photo")
    keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))).save(tmp_path / "huge.h5")
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("the user's")
    result = subprocess.run(
        [sys.executable, "-m", "gencompress", "export", str(tmp_path / "huge.h5"), "-o", str(out), "--calibration-samples", "1", "--eval-samples", "1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, preexec_fn=_limited(6 * 2**30))
    assert_one_error(result, 5, "input 'photo' (20000×20000×3, 4.47 GiB a sample) for 1 calibration and 1 held-out samples needs about 17.9 GiB")
    assert "room under the address-space limit (ulimit -v) of 6.0 GiB" in result.stderr
    assert sorted(os.listdir(out)) == ["previous.txt"]
    _no_scratch_left(tmpdir)


def test_out_of_memory_where_python_runs_is_one_line(exported, dcgan_h5, tmp_path, monkeypatch):
    """A MemoryError while the result is staged (what numpy raises when an allocation fails):
    one line, exit 5, the previous result as it was."""
    from click.testing import CliRunner

    from gencompress import artifacts
    from gencompress.cli import cli

    out = tmp_path / "out"
    exported["tflite"].save(out)
    before = snapshot(out)

    def copyfile(src, dst):
        raise MemoryError()

    monkeypatch.setattr(artifacts.shutil, "copyfile", copyfile)
    result = CliRunner().invoke(cli, ["export", str(dcgan_h5), "-o", str(out), *QUICK, "--format", "tflite"])
    assert result.exit_code == 5, result.output
    errors = [line for line in result.output.splitlines() if "rror" in line]
    assert errors == [errors[0]] and errors[0].startswith("gencompress: error: out of memory. the machine, or a limit on the process"), result.output
    assert f"nothing of this run was written, {out} is as it was" in errors[0]
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- scratch folders of dead runs


def test_a_killed_runs_scratch_folder_is_removed_by_the_next_run(dcgan_h5, tmp_path, tmpdir_env):
    from gencompress.artifacts import ScratchFolder, remove_dead_scratch

    tmpdir, env = tmpdir_env
    live = ScratchFolder(tmpdir)  # a live run's: this process holds its lock
    unlocked = tmpdir / f"gencompress-{os.getppid()}-older"  # no lock file, its process alive: kept too
    unlocked.mkdir()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gencompress", "export", str(dcgan_h5), "-o", str(tmp_path / "out"), *QUICK],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not list(tmpdir.glob(f"gencompress-{proc.pid}-*/.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        (dead,) = tmpdir.glob(f"gencompress-{proc.pid}-*")  # SIGKILL: no cleanup ran
        result = gencompress("export", tmp_path / "missing.h5", env=env)  # any later run
        assert_one_error(result, 2, "model not found")
        assert not dead.exists()
        assert live.path.exists() and unlocked.exists()
        assert remove_dead_scratch(tmpdir) == []
    finally:
        live.close()
    assert not live.path.exists()
    forgotten = ScratchFolder(tmpdir)  # a library caller that never closes its Result
    path = forgotten.path
    del forgotten
    gc.collect()
    assert not path.exists()


# ----------------------------------------------------------------------------- names reach the terminal escaped


def test_names_with_control_characters_are_escaped_wherever_printed(dcgan_h5, tmp_path):
    """A model file named with a newline and an escape sequence: one table row, no forged log
    line, no colour change; the written files keep the real name."""
    name = "gen\nerator\x1b[31m"
    model = tmp_path / f"{name}.h5"
    shutil.copy(dcgan_h5, model)
    out = tmp_path / "out"
    result = gencompress("export", model, "-o", out, "--format", "tflite", *QUICK)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    shown = "gen\\nerator\\x1b[31m.float32.tflite"
    rows = [line for line in result.stdout.splitlines() if "float32" in line]
    assert len(rows) == 1 and rows[0].startswith(shown), result.stdout
    assert not any(line.startswith("erator") for line in (result.stdout + result.stderr).splitlines())
    assert f"loading gen\\nerator\\x1b[31m.h5" in result.stderr
    assert (out / f"{name}.float32.tflite").is_file()
    assert json.loads((out / "report.json").read_text())["artifacts"][0]["path"].endswith(f"{name}.float32.tflite")


def test_model_and_layer_names_tensorflow_refuses(keras, tmp_path):
    """A Keras model named with a newline (or a space) converts under a name TensorFlow takes; a
    layer named with a newline does not load: one line, its name escaped."""
    import h5py

    from gencompress.converters.tflite import convert_tflite
    from gencompress.errors import ModelLoadError
    from gencompress.model import from_keras, load_model
    from gencompress.printable import printable

    z = keras.Input((4,), name="z")
    original = keras.Model(z, keras.layers.Dense(4, activation="tanh", name="image")(z), name="my\nmodel")
    loaded = from_keras(original, name="named")
    assert loaded.keras_model.name == "my_model" and original.name == "my\nmodel"
    assert len(convert_tflite(loaded, "float32")) > 0
    keras.Model(z, keras.layers.Dense(4, name="image")(z)).save(tmp_path / "layer.h5")
    with h5py.File(tmp_path / "layer.h5", "r+") as f:
        config = f.attrs["model_config"]
        config = config.decode() if isinstance(config, bytes) else config
        f.attrs["model_config"] = config.replace('"image"', '"ima\\nge\\u001b[2J"')
    with pytest.raises(ModelLoadError, match="cannot load .*layer.h5: 'ima"):
        load_model(tmp_path / "layer.h5")
    assert printable("a\nb\x1b[2J\u202ec") == "a\\nb\\x1b[2J\\u202ec"


# ----------------------------------------------------------------------------- what already held, kept


def test_path_traversal_entries_in_a_keras_archive_write_nothing_outside(keras, tmp_path):
    from gencompress.model import load_model

    z = keras.Input((4,), name="z")
    keras.Model(z, keras.layers.Dense(4, name="image")(z)).save(tmp_path / "m.keras")
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    crafted = work / "crafted.keras"
    shutil.copy(tmp_path / "m.keras", crafted)
    with zipfile.ZipFile(crafted, "a") as archive:
        archive.writestr("../../escaped.txt", "outside")
        archive.writestr("assets/../../../escaped2.txt", "outside")
        archive.writestr(str(tmp_path / "absolute.txt"), "outside")
    try:
        load_model(crafted)
    except Exception:  # noqa: BLE001 - refusing the archive is fine too; writing outside is not
        pass
    written = {p.name for p in tmp_path.rglob("*")}
    assert not {"escaped.txt", "escaped2.txt", "absolute.txt"} & written


def test_a_crafted_report_never_makes_a_run_delete_outside_its_folder(exported, tmp_path):
    victims = [tmp_path / "victim.txt", tmp_path / "elsewhere" / "victim2.txt"]
    victims[1].parent.mkdir()
    for v in victims:
        v.write_text("keep me")
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "link-out").symlink_to(real)  # -o through a symlink
    (real / "report.json").write_text(json.dumps({
        "schema_version": "1", "command": "export",
        "files": ["../victim.txt", str(victims[1]), "..", ".", "../elsewhere/victim2.txt"],
    }))
    exported["tflite"].save(tmp_path / "link-out")
    assert all(v.read_text() == "keep me" for v in victims)
    assert (real / "report.json").is_file() and (real / "dcgan.float32.tflite").is_file()


def test_read_only_and_symlinked_inputs_are_untouched(dcgan_h5, tmp_path):
    from gencompress.calibration import Calibration
    from gencompress.errors import CalibrationError
    from gencompress.model import TensorInfo, load_model

    model = tmp_path / "ro.h5"
    shutil.copy(dcgan_h5, model)
    model.chmod(0o444)
    link = tmp_path / "link.h5"
    link.symlink_to(model)
    before = (model.read_bytes(), model.stat().st_mode, model.stat().st_mtime_ns)
    assert load_model(link).stem == "link" and load_model(model).params > 0
    assert (model.read_bytes(), model.stat().st_mode, model.stat().st_mtime_ns) == before
    np.save(tmp_path / "pickled.npy", np.array([{"code": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match="holds Python objects"):
        Calibration.file(tmp_path / "pickled.npy").sets([TensorInfo("z", (None, 8), "float32")], {}, 4, 2, seed=0)
