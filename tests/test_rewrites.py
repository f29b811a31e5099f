"""Plan rewrites (lstmrt/backends/rewrites.py): the batch-first glue torch.onnx writes around a
recurrent node runs as one step, with the values the unfused plan and onnxruntime give."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lstmrt
import lstmrt.backends.native as native
from models import random_feed, streaming_model


def op_types(sess) -> list:
    return [step.op_type for step in sess._backend.plan.steps]


def unfused(model):
    """The same model on a plan built without the rewrite."""
    keep = native.fuse_batch_first
    native.fuse_batch_first = lambda steps, *args: steps
    try:
        return lstmrt.InferenceSession(model, backend="native")
    finally:
        native.fuse_batch_first = keep


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch, time", [(1, 1), (1, 7), (3, 5)])
def test_batch_first_glue_runs_as_one_step(cell, batch, time):
    model = streaming_model(cell)
    fused, plain = lstmrt.InferenceSession(model, backend="native"), unfused(model)
    reference = lstmrt.InferenceSession(model, backend="onnxruntime")
    assert op_types(fused)[0] == cell and "Squeeze" not in op_types(fused) and "Transpose" not in op_types(fused)
    assert "Squeeze" in op_types(plain)
    feed = random_feed(model, {"batch": batch, "time": time}, seed=batch + time)
    for got, want, ref in zip(fused.run(None, feed), plain.run(None, feed), reference.run(None, feed)):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_glue_whose_values_are_read_elsewhere_stays():
    """Y also leaves the graph, so the Squeeze and Transpose around it cannot fold into the node."""
    model = streaming_model("LSTM")
    squeezed = next(n.output[0] for n in model.graph.node if n.op_type == "Squeeze")
    model.graph.output.append(helper.make_tensor_value_info(squeezed, TensorProto.FLOAT, None))
    sess = lstmrt.InferenceSession(model, backend="native")
    assert "Squeeze" in op_types(sess)
    feed = random_feed(model, {"batch": 2, "time": 4}, seed=9)
    reference = lstmrt.InferenceSession(model, backend="onnxruntime").run(None, feed)
    for got, ref in zip(sess.run(None, feed), reference):
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_fused_step_keeps_the_node_s_errors():
    """A state of the wrong batch is the recurrent node's error, fused or not."""
    model = streaming_model("LSTM")
    feed = random_feed(model, {"batch": 2, "time": 3})
    feed["h0"] = np.zeros((1, 3, 7), np.float32)
    messages = []
    for sess in (lstmrt.InferenceSession(model, backend="native"), unfused(model)):
        with pytest.raises(lstmrt.InputError, match="node 'lstm_node' \\(LSTM\\): initial_h has shape") as raised:
            sess.run(None, feed)
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
