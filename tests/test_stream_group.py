"""Stream groups: members joining and leaving, each getting what it would get alone."""
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import lstmrt
from models import bare_cell, streaming_model

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporters"


def alone(sess, chunks):
    stream = sess.stream()
    return [stream.run({"x": c})[0] for c in chunks], stream.state


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_members_join_and_leave_and_match_lone_streams(cell, backend):
    sess = lstmrt.InferenceSession(streaming_model(cell), backend=backend)
    rng = np.random.default_rng(4)
    group = sess.stream_group()
    # member m joins at step start[m] and leaves after len(chunks[m]) steps; chunk lengths vary per step
    lengths = [3, 1, 4, 2, 5, 1]
    start = {0: 0, 1: 0, 2: 2, 3: 3}
    chunks = {m: [rng.standard_normal((1, lengths[s], 5)).astype(np.float32) for s in range(start[m], 6 - (m == 1) * 3)]
              for m in start}
    keys, got = {}, {m: [] for m in start}
    for step in range(6):
        for m, s0 in start.items():
            if s0 == step:
                keys[m] = group.add()
        active = {m: chunks[m][step - start[m]] for m in keys if step - start[m] < len(chunks[m])}
        for m in [m for m in keys if m not in active]:
            group.remove(keys.pop(m))
        results = group.run({keys[m]: {"x": c} for m, c in active.items()})
        for m in active:
            got[m].append(results[keys[m]][0])
    for m in start:
        want, _ = alone(sess, chunks[m])
        for g, w in zip(got[m], want):
            np.testing.assert_allclose(g, w, atol=1e-5)
    assert len(group) == 3


def test_member_state_and_errors():
    sess = lstmrt.InferenceSession(streaming_model("LSTM"), backend="native")
    group = sess.stream_group()
    a, b = group.add(), group.add()
    x = np.random.default_rng(5).standard_normal((1, 4, 5)).astype(np.float32)
    group.run({a: {"x": x}})
    _, lone_state = alone(sess, [x])
    for name, value in lone_state.items():
        np.testing.assert_allclose(group.state(a)[name], value, atol=1e-6)
    assert all(not v.any() for v in group.state(b).values())   # b has not run: still at zeros
    c = group.add(state=group.state(a))              # a member can start from another's state
    out = group.run({a: {"x": x}, c: {"x": x}})
    np.testing.assert_allclose(out[a][0], out[c][0], atol=1e-6)
    with pytest.raises(lstmrt.InputError, match="chunks of one length"):
        group.run({a: {"x": x}, b: {"x": x[:, :2]}})
    group.remove(b)
    with pytest.raises(lstmrt.StreamError, match="no member"):
        group.run({b: {"x": x}})


def test_tf2onnx_model_with_unnamed_dims_groups():
    """tf2onnx names no dims alike (unk__N): the batch axis is traced and matched by size."""
    sess = lstmrt.InferenceSession(str(FIXTURES / "keras_lstm_stream.onnx"), backend="native")
    group = sess.stream_group()
    keys = [group.add() for _ in range(3)]
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((1, 6, 4)).astype(np.float32) for _ in keys]
    out = group.run(dict(zip(keys, [{"x": x} for x in xs])))
    for k, x in zip(keys, xs):
        np.testing.assert_allclose(out[k][0], alone(sess, [x])[0][0], atol=1e-5)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_bare_cell_group_matches_lone_onnxruntime_streams(cell):
    """Members of a bare cell's group join, leave, sit a step out and change chunk length, and
    each gets what a lone onnxruntime stream gets."""
    model = bare_cell(cell)
    sess = lstmrt.InferenceSession(model, backend="native")
    reference = lstmrt.InferenceSession(model, backend="onnxruntime")
    group = sess.stream_group()
    rng = np.random.default_rng(8)
    lone = {}
    # (step length, members running: "all" or a subset by join order, joins before the step, leaves after)
    schedule = [(1, "all", 3, 0), (1, "all", 0, 0), (3, "all", 2, 1), (1, [0, 2], 0, 0), (2, "all", 1, 2), (1, "all", 0, 0)]
    for steps, running, joins, leaves in schedule:
        for _ in range(joins):
            key = group.add()
            lone[key] = reference.stream()
        members = list(lone) if running == "all" else [list(lone)[i] for i in running]
        feeds = {k: {"X": rng.standard_normal((steps, 1, 10)).astype(np.float32)} for k in members}
        got = group.run(feeds)
        for k in members:
            np.testing.assert_allclose(got[k][0], lone[k].run(feeds[k])[0], atol=1e-5)
            assert got[k][0].shape == (steps, 1, 1, 24)
        for k in list(lone)[:leaves]:
            group.remove(k)
            del lone[k]
    for k, stream in lone.items():
        for name, value in stream.state.items():
            np.testing.assert_allclose(group.state(k)[name], value, atol=1e-5)


def test_bare_cell_group_odd_feeds_are_copied_or_refused():
    sess = lstmrt.InferenceSession(bare_cell("LSTM"), backend="native")
    reference = lstmrt.InferenceSession(bare_cell("LSTM"), backend="onnxruntime")
    group = sess.stream_group()
    keys = [group.add() for _ in range(3)]
    lone = [reference.stream() for _ in keys]
    x = np.random.default_rng(9).standard_normal((2, 1, 20)).astype(np.float32)
    strided = x[:, :, ::2]                                   # not contiguous: the general path copies it
    got = group.run({k: {"X": strided} for k in keys})
    for k, stream in zip(keys, lone):
        np.testing.assert_allclose(got[k][0], stream.run({"X": strided})[0], atol=1e-5)
    with pytest.raises(lstmrt.InputError, match="dtype"):
        group.run({keys[0]: {"X": strided}, keys[1]: {"X": strided.astype(np.float64)}, keys[2]: {"X": strided}})
    with pytest.raises(lstmrt.InputError, match="chunks of one length"):
        group.run({keys[0]: {"X": strided}, keys[1]: {"X": strided[:1]}, keys[2]: {"X": strided}})
    with pytest.raises(lstmrt.InputError, match="batch 1"):
        group.run({k: {"X": np.concatenate([strided, strided], axis=1)} for k in keys})


def test_a_group_emptied_after_running_takes_new_members():
    sess = lstmrt.InferenceSession(streaming_model("LSTM"), backend="native")
    reference = lstmrt.InferenceSession(streaming_model("LSTM"), backend="onnxruntime")
    group = sess.stream_group()
    x = np.random.default_rng(11).standard_normal((1, 2, 5)).astype(np.float32)
    a = group.add()
    group.run({a: {"x": x}})
    group.remove(a)
    b = group.add()
    np.testing.assert_allclose(group.run({b: {"x": x}})[b][0], reference.stream().run({"x": x})[0], atol=1e-5)


MODELS = Path(__file__).resolve().parent / "fixtures" / "models"


@pytest.mark.parametrize("compiled", [True, False])
def test_many_members_in_random_subsets_match_lone_onnxruntime_streams(compiled):
    """Members join and leave across several growths and shrinks of the group's state banks,
    and each call steps a random subset in a random order; every member gets what a lone
    onnxruntime stream gets.  compiled=False is the numpy plan's group path, the same banks."""
    model = streaming_model("LSTM")
    sess = lstmrt.InferenceSession(model, backend="native", compiled=compiled)
    reference = lstmrt.InferenceSession(model, backend="onnxruntime")
    group = sess.stream_group()
    rng = np.random.default_rng(21)
    lone = {}
    for step in range(40):
        for _ in range(int(rng.integers(0, 6 if step < 20 else 2))):
            key = group.add()
            lone[key] = reference.stream()
        for key in [k for k in lone if rng.random() < (0.05 if step < 20 else 0.3)]:
            group.remove(key)
            del lone[key]
        if not lone:
            continue
        members = [k for k in rng.permutation(list(lone)) if rng.random() < 0.8] or list(lone)[:1]
        steps = int(rng.integers(1, 3))
        feeds = {int(k): {"x": rng.standard_normal((1, steps, 5)).astype(np.float32)} for k in members}
        got = group.run(feeds)
        assert list(got) == list(feeds)
        for k, feed in feeds.items():
            np.testing.assert_allclose(got[k][0], lone[k].run(feed)[0], atol=1e-5)
    assert len(group) == len(lone)
    for k, stream in lone.items():
        for name, value in stream.state.items():
            np.testing.assert_allclose(group.state(k)[name], value, atol=1e-5)


def _vad_group(members: int):
    """A native group of the VAD-shaped fixture with `members` members, and a lone onnxruntime
    stream for each."""
    path = str(MODELS / "torch_vad_op18.onnx")
    group = lstmrt.InferenceSession(path, backend="native").stream_group()
    reference = lstmrt.InferenceSession(path, backend="onnxruntime")
    keys = [group.add() for _ in range(members)]
    return group, keys, {k: reference.stream() for k in keys}


def test_vad_model_group_with_state_batched_on_axis_1_and_a_shared_sample_rate():
    """The VAD-shaped fixture packs its state as [2, batch, 128] and takes a sample-rate scalar:
    the group stacks members on the state's axis 1 and passes the shared scalar through."""
    group, keys, lone = _vad_group(5)
    rng, sr = np.random.default_rng(22), np.array(16000, np.int64)
    for members in (keys, keys[1:4], keys[::-1], keys[:1]):
        feeds = {k: {"input": rng.standard_normal((1, 512)).astype(np.float32), "sr": sr} for k in members}
        got = group.run(feeds)
        for k in members:
            np.testing.assert_allclose(got[k][0], lone[k].run(feeds[k])[0], atol=1e-5)
    with pytest.raises(lstmrt.InputError, match="'sr'.*same value"):
        group.run({keys[0]: {"input": np.zeros((1, 512), np.float32), "sr": sr},
                   keys[1]: {"input": np.zeros((1, 512), np.float32), "sr": np.array(8000, np.int64)}})
    for k in keys:
        np.testing.assert_allclose(group.state(k)["state"], lone[k].state["state"], atol=1e-5)


def test_a_call_failing_inside_the_program_leaves_every_member_state_untouched():
    """A token out of the embedding's range fails the compiled call in C (its runtime Gather):
    no member's state moves, and the next good call goes on from where they were."""
    path = str(MODELS / "keras_embed_lstm_stream.onnx")
    sess = lstmrt.InferenceSession(path, backend="native")
    reference = lstmrt.InferenceSession(path, backend="onnxruntime")
    group = sess.stream_group()
    keys = [group.add() for _ in range(3)]
    lone = {k: reference.stream() for k in keys}
    rng = np.random.default_rng(23)
    tokens = lambda: rng.integers(1, 50, (1, 4)).astype(np.int32)  # noqa: E731
    first = {k: {"tokens": tokens()} for k in keys}
    for k, out in group.run(first).items():
        np.testing.assert_allclose(out[0], lone[k].run(first[k])[0], atol=1e-5)
    before = {k: group.state(k) for k in keys}
    bad = {k: {"tokens": tokens()} for k in keys}
    bad[keys[1]]["tokens"][0, 2] = 5000
    with pytest.raises(lstmrt.InputError, match="out of range"):
        group.run(bad)
    for k in keys:
        for name, value in before[k].items():
            np.testing.assert_array_equal(group.state(k)[name], value)
    good = {k: {"tokens": tokens()} for k in keys}
    for k, out in group.run(good).items():
        np.testing.assert_allclose(out[0], lone[k].run(good[k])[0], atol=1e-5)


def test_members_that_join_and_leave_before_the_first_call_get_rows_of_their_own():
    sess = lstmrt.InferenceSession(streaming_model("GRU"), backend="native")
    reference = lstmrt.InferenceSession(streaming_model("GRU"), backend="onnxruntime")
    group = sess.stream_group()
    rng = np.random.default_rng(24)
    a = group.add()
    b = group.add(state={"h0": rng.standard_normal((1, 1, 7)).astype(np.float32)})
    group.remove(a)
    c = group.add()
    lone = {b: reference.stream(), c: reference.stream()}
    lone[b].set_state(group.state(b))
    for _ in range(3):
        feeds = {k: {"x": rng.standard_normal((1, 2, 5)).astype(np.float32)} for k in (b, c)}
        got = group.run(feeds)
        for k in (b, c):
            np.testing.assert_allclose(got[k][0], lone[k].run(feeds[k])[0], atol=1e-5)


def test_a_member_state_of_another_batch_is_refused_and_nothing_moves():
    sess = lstmrt.InferenceSession(streaming_model("LSTM"), backend="native")
    group = sess.stream_group()
    a = group.add()
    x = np.random.default_rng(25).standard_normal((1, 3, 5)).astype(np.float32)
    group.run({a: {"x": x}})
    before = group.state(a)
    two_rows = {name: np.concatenate([value, value], axis=1) for name, value in before.items()}
    with pytest.raises(lstmrt.StreamError, match="one sequence"):
        group.add(state=two_rows)
    assert len(group) == 1
    for name, value in group.state(a).items():
        np.testing.assert_array_equal(value, before[name])


def test_a_group_profile_times_the_compiled_call_in_c_and_leaves_every_member_state_alone():
    """group.profile() times the program a call with these members runs, its gathering and
    scattering of the members' state rows included; the members' state and their next calls
    are as if it had never run."""
    group, keys, lone = _vad_group(3)
    rng, sr = np.random.default_rng(23), np.array(16000, np.int64)

    def chunk():
        return {"input": rng.standard_normal((1, 512)).astype(np.float32), "sr": sr}
    feeds = {k: chunk() for k in keys}
    group.run(feeds)
    for k in keys:
        lone[k].run(feeds[k])
    before = {k: group.state(k)["state"].copy() for k in keys}
    rows = group.profile({k: chunk() for k in keys[:2]}, calls=10)
    labels = [label for label, _ in rows]
    assert any("'state'" in label and "gathered" in label for label in labels), labels
    assert any("scattered" in label for label in labels), labels
    assert all(np.isfinite(seconds) and seconds >= 0 for _, seconds in rows)
    for k in keys:
        np.testing.assert_array_equal(group.state(k)["state"], before[k])
    feeds = {k: chunk() for k in keys[::-1]}
    got = group.run(feeds)
    for k in keys:
        np.testing.assert_allclose(got[k][0], lone[k].run(feeds[k])[0], atol=1e-5)
        np.testing.assert_allclose(group.state(k)["state"], lone[k].state["state"], atol=1e-5)


@pytest.mark.parametrize("options", [{"backend": "onnxruntime"}, {"backend": "native", "compiled": False}])
def test_a_group_profile_without_compiled_programs_says_so(options):
    group = lstmrt.InferenceSession(streaming_model("GRU"), **options).stream_group()
    key = group.add()
    with pytest.raises(lstmrt.UnsupportedModelError, match="native backend with compiled programs"):
        group.profile({key: {"x": np.zeros((1, 1, 5), np.float32)}})


def _with_outputs(extra_nodes, extra_outputs, cell="GRU"):
    model = streaming_model(cell)
    model.graph.node.extend(extra_nodes)
    model.graph.output.extend(extra_outputs)
    return model.SerializeToString()


def _states(group, keys):
    return {k: {n: v.copy() for n, v in group.state(k).items()} for k in keys}


def test_an_output_fixed_by_the_signature_comes_back_in_its_place_every_call():
    """Shape(x) is folded when a program compiles: it must still come back, in its place, from
    the programs streams keep (their second call onwards) and from a group's."""
    data = _with_outputs([helper.make_node("Shape", ["x"], ["xshape"])],
                         [helper.make_tensor_value_info("xshape", TensorProto.INT64, [3])])
    sess, reference = lstmrt.InferenceSession(data, backend="native"), lstmrt.InferenceSession(data, backend="onnxruntime")
    rng = np.random.default_rng(31)
    stream, lone = sess.stream(), reference.stream()
    for steps in (4, 4, 2, 4):
        feed = {"x": rng.standard_normal((1, steps, 5)).astype(np.float32)}
        got, want = stream.run(feed), lone.run(feed)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-5)
    group = sess.stream_group()
    key = group.add()
    feed = {"x": rng.standard_normal((1, 3, 5)).astype(np.float32)}
    got = group.run({key: feed})[key]           # one member: its own shape, as alone
    for g, w in zip(got, reference.stream().run(feed)):
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_an_output_no_member_has_a_row_of_fails_the_call_before_any_state_moves(backend):
    """A sum over everything: with two members no part of it is either member's, so the call
    fails, and it fails before the new state is written."""
    data = _with_outputs([helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)],
                         [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])])
    group = lstmrt.InferenceSession(data, backend=backend).stream_group()
    keys = [group.add(), group.add()]
    feeds = {k: {"x": np.full((1, 2, 5), 0.5, np.float32)} for k in keys}
    group.run({keys[0]: feeds[keys[0]]})      # one member: the sum is its own
    before = _states(group, keys)
    with pytest.raises(lstmrt.StreamError, match="'total'"):
        group.run(feeds)
    for k, state in _states(group, keys).items():
        for name, value in state.items():
            np.testing.assert_array_equal(value, before[k][name])


def test_an_output_with_two_axes_of_the_members_size_is_split_on_the_batch_one():
    """y transposed to [time, batch, 3] with dims named like neither input dim (as tf2onnx's unk__N):
    with as many steps as members, shape inference tells which axis holds the members."""
    data = _with_outputs([helper.make_node("Transpose", ["y"], ["y_tb"], perm=[1, 0, 2])],
                         [helper.make_tensor_value_info("y_tb", TensorProto.FLOAT, ["unk__1", "unk__2", 3])])
    for backend in ("native", "onnxruntime"):
        sess = lstmrt.InferenceSession(data, backend=backend)
        reference = lstmrt.InferenceSession(data, backend="onnxruntime")
        group = sess.stream_group()
        keys = [group.add(), group.add()]
        rng = np.random.default_rng(32)
        feeds = {k: {"x": rng.standard_normal((1, 2, 5)).astype(np.float32)} for k in keys}
        got = group.run(feeds)
        for k in keys:
            want = reference.stream().run(feeds[k])
            for g, w in zip(got[k], want):
                assert g.shape == w.shape
                np.testing.assert_allclose(g, w, atol=1e-5)


def test_a_state_of_two_sequences_is_refused_when_added():
    group = lstmrt.InferenceSession(streaming_model("GRU"), backend="native").stream_group()
    with pytest.raises(lstmrt.StreamError, match="one sequence"):
        group.add(state={"h0": np.ones((1, 2, 7), np.float32)})
    assert len(group) == 0


def test_a_state_given_before_the_first_call_that_does_not_fit_fails_it_and_moves_nothing():
    """tf2onnx names no dims alike, so a state's batch axis is known only at the first call: a
    member's state of two sequences fails that call naming the member, and the others keep theirs."""
    path = str(FIXTURES / "keras_lstm_stream.onnx")
    sess, reference = lstmrt.InferenceSession(path, backend="native"), lstmrt.InferenceSession(path, backend="onnxruntime")
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    states = [n for n in shapes if n != "x"]
    rng = np.random.default_rng(33)
    one = {n: rng.standard_normal([1 if isinstance(d, str) else d for d in shapes[n]]).astype(np.float32) for n in states}
    two = {n: np.concatenate([v, v], axis=0) for n, v in one.items()}
    group = sess.stream_group()
    good, bad = group.add(state=one), group.add(state=two)
    x = rng.standard_normal((1, 3, 4)).astype(np.float32)
    with pytest.raises(lstmrt.StreamError, match=f"member {bad}"):
        group.run({good: {"x": x}})
    for n, v in group.state(good).items():
        np.testing.assert_array_equal(v, one[n])
    group.remove(bad)
    got = group.run({good: {"x": x}})[good]
    lone = reference.stream(); lone.set_state(one)
    np.testing.assert_allclose(got[0], lone.run({"x": x})[0], atol=1e-5)


def test_a_group_holds_its_members_to_the_models_chunk_rule():
    """A stride-2 pooling along time: a lone stream refuses 3-step chunks, so does a group (and
    nothing moves)."""
    import json
    model = streaming_model("GRU")
    model.graph.node.extend([helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1]),
                             helper.make_node("AveragePool", ["yt"], ["pt"], kernel_shape=[2], strides=[2], name="pool"),
                             helper.make_node("Transpose", ["pt"], ["pooled"], perm=[0, 2, 1])])
    model.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", "half", 3]))
    helper.set_model_props(model, {"lstmrt.stream_chunks": json.dumps({"multiple": 2, "inputs": {"x": 1},
                                                                        "layers": {"pool": 2}})})
    sess = lstmrt.InferenceSession(model.SerializeToString(), backend="native")
    group = sess.stream_group()
    key = group.add()
    group.run({key: {"x": np.ones((1, 2, 5), np.float32)}})
    before = _states(group, [key])
    with pytest.raises(lstmrt.InputError, match="multiple of 2"):
        group.run({key: {"x": np.ones((1, 3, 5), np.float32)}})
    np.testing.assert_array_equal(group.state(key)["h0"], before[key]["h0"])


@pytest.mark.parametrize("convert", [lambda x: x.astype(">f4"), np.asfortranarray])
def test_feeds_a_lone_stream_takes_a_group_takes_too(convert):
    """Big-endian and Fortran-ordered chunks: a lone stream converts them, a group must as well."""
    sess = lstmrt.InferenceSession(streaming_model("GRU"), backend="native")
    group = sess.stream_group()
    keys = [group.add(), group.add()]
    rng = np.random.default_rng(34)
    xs = {k: rng.standard_normal((1, 3, 5)).astype(np.float32) for k in keys}
    got = group.run({k: {"x": convert(x)} for k, x in xs.items()})
    for k, x in xs.items():
        np.testing.assert_allclose(got[k][0], sess.stream().run({"x": x})[0], atol=1e-5)
