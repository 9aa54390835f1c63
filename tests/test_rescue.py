"""`quantize`'s default QAT rescue (--method auto): when post-training int8 misses the target at
int8 speed, quantization-aware training of the fast form (BatchNorm folded, transposed
convolutions in sub-pixel form), planned from the model's size, graded by the speed rule."""

import json

import numpy as np
import onnx
from click.testing import CliRunner

from gencompress.cli import cli
from gencompress.compress.qat.export import propagate_qdq

FAST = ["--calibration-samples", "32", "--eval-samples", "16", "--latency-runs", "3"]


def test_rescue_plan_is_planned_from_the_model_not_timed(dcgan):
    """The rescue's steps come from the model's multiply-accumulates: the same command plans the
    same steps (and writes the same bytes) on any machine; a model too costly for the minutes
    the rescue has is not rescued, in one line."""
    import dataclasses

    from gencompress.config import AUTO_QAT_SECONDS, QAT_TRAINING, RESCUE_CEILING
    from gencompress.pipelines import rescue

    from conftest import make_session

    session = make_session(dcgan, 16, 4)
    first = rescue.rescue_training(session, QAT_TRAINING, dcgan)
    assert first == rescue.rescue_training(session, QAT_TRAINING, dcgan)
    assert first.steps == QAT_TRAINING.max_steps and first.batch_size == QAT_TRAINING.max_batch_size  # a tiny model: the caps
    assert first.time_budget == AUTO_QAT_SECONDS * RESCUE_CEILING  # a ceiling on slower machines
    given = dataclasses.replace(QAT_TRAINING, time_budget=60.0)
    assert rescue.rescue_training(session, given, dcgan) is given  # the user's choice is kept
    costly = dataclasses.replace(QAT_TRAINING, max_steps=1000)
    old = rescue.QAT_SECONDS_PER_MAC
    try:
        rescue.QAT_SECONDS_PER_MAC = 1.0  # as if each sample cost minutes
        assert rescue.rescue_training(session, costly, dcgan) is None
    finally:
        rescue.QAT_SECONDS_PER_MAC = old
    assert "no quantization-aware training" in session.notes[-1] and "--time-budget" in session.notes[-1]


def test_rescue_trains_the_fast_form_and_ships_by_the_speed_rule(dcgan_h5, tmp_path):
    """A target post-training int8 cannot reach at int8 speed: QAT runs by default on the
    sub-pixel form, both its files run int8 kernels, and what ships is the passing artifact of
    the fastest class (here float16: QAT int8 misses too); the terminal says so in one line."""
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(out), "--min-psnr", "60", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    qat = report["qat"]
    assert qat is not None and "up1_pad" in qat["quantized_layers"] and "up1_crop" in qat["quantized_layers"]  # the sub-pixel form
    assert qat["finetune"]["plan"]["chosen"] == []  # steps and batch decided before, from the MACs
    by_name = {a["path"].rsplit("/", 1)[-1]: a for a in report["artifacts"]}
    for fmt in ("tflite", "onnx"):
        q = by_name[f"dcgan-qat.int8.{fmt}"]
        assert q["compute"] == "int8", q  # every heavy op in int8 kernels, ONNX included
        shipped = [a for a in report["artifacts"] if a["format"] == fmt and a["passed"] is not None and a["precision"] != "float32"]
        assert len(shipped) == 1 and shipped[0]["fidelity"]["psnr_db"] >= 60.0 and shipped[0]["compute"] == "float"
        assert q["passed"] is None  # the reference
    lines = [n for n in report["notes"] if "nothing met 60 dB at int8 speed" in n]
    assert len(lines) == 2 and all("QAT int8" in n and "best full int8" in n for n in lines)
    assert "nothing met 60 dB at int8 speed" in result.output


def test_method_ptq_never_trains(dcgan_h5, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(out), "--min-psnr", "60", "--method", "ptq", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["qat"] is None and not any(a["variant"] == "qat" for a in report["artifacts"])


def test_a_rescue_that_fails_leaves_the_post_training_picks(dcgan_h5, tmp_path, monkeypatch):
    """The QAT rescue refused a 30-BatchNorm super-resolution generator (its folded copy differed
    by 2.4e-4 in float32, past a 1e-5 check) and the whole run ended in exit 4. A rescue that
    fails is a note; the post-training picks ship. (The check is made to fail here.)"""
    from gencompress.compress.qat import model as qat_model

    monkeypatch.setattr(qat_model, "FOLD_TOLERANCE", -1.0)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(out), "--min-psnr", "60", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["qat"] is None and not any(a["variant"] == "qat" for a in report["artifacts"])
    assert not any("-qat." in p.name for p in out.iterdir())
    assert any("quantization-aware training failed (folding BatchNorm changed" in n for n in report["notes"])
    shipped = [a for a in report["artifacts"] if a["precision"] != "float32"]
    assert len(shipped) == 2 and all(a["fidelity"]["psnr_db"] >= 60.0 for a in shipped)


def test_qdq_carried_through_data_movement():
    """tfmot fake-quantizes layer outputs only: after a depth-to-space and a pad it leaves none,
    so onnxruntime ran the next Conv in float. The grid is carried through such nodes."""
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("DepthToSpace", ["xd"], ["d2s"], blocksize=2),
        helper.make_node("Pad", ["d2s", "pads"], ["padded"]),
        helper.make_node("Relu", ["padded"], ["y"]),
    ]
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 6, 6])], [scale, zero, pads])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert propagate_qdq(proto) == 1  # after the pad, before the Relu (the d2s feeds only the pad)
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "DepthToSpace", "Pad", "QuantizeLinear", "DequantizeLinear", "Relu"]
    relu = proto.graph.node[-1]
    assert relu.input[0] == "padded/dequantized" and proto.graph.node[4].input[1:] == ["s", "zp"]
    onnx.checker.check_model(proto)
