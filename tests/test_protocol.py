"""Framing and messages of the serial protocol, under damage (hypothesis properties).

The claims: COBS and CRC-32 match their standard definitions; any stream of frames,
split anywhere, decodes to exactly those frames; noise between frames, flipped bits,
dropped and duplicated bytes and frames cut in half never produce a frame that was not
sent, and never cost more than the damaged frame; payloads round-trip.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p

# ---------------------------------------------------------------------------- strategies

frames = st.builds(p.Frame, type=st.integers(0, 255), seq=st.integers(0, 0xFFFF),
                   payload=st.binary(max_size=600))
frame_lists = st.lists(frames, min_size=1, max_size=6)


def decoded_frames(data: bytes, splits: list[int] | None = None) -> list:
    dec = p.StreamDecoder()
    items = []
    cuts = sorted(set(splits or []))
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        items += dec.feed(data[a:b])
    return items


def only_frames(items: list) -> list[p.Frame]:
    return [i for i in items if isinstance(i, p.Frame)]


# ---------------------------------------------------------------------------- CRC, COBS


def test_crc32_is_the_standard_check_value():
    assert p.crc32(b"123456789") == 0xCBF43926  # CRC-32/ISO-HDLC check value


@pytest.mark.parametrize(("raw", "encoded"), [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
])
def test_cobs_matches_published_examples(raw, encoded):
    assert p.cobs_encode(raw) == encoded
    assert p.cobs_decode(encoded) == raw


@given(st.binary(max_size=3000))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data):
    enc = p.cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + (len(data) + 253) // 254 + 1
    assert p.cobs_decode(enc) == data


# ---------------------------------------------------------------------------- frames


@given(frame_lists, st.lists(st.integers(0, 5000), max_size=8))
def test_any_split_of_a_stream_decodes_to_the_frames_sent(sent, splits):
    wire = b"".join(p.encode_frame(f) for f in sent)
    items = decoded_frames(wire, [s for s in splits if s < len(wire)])
    assert items == sent


def test_largest_frame_fits_the_advertised_wire_size():
    frame = p.Frame(p.MsgType.RESULT, 1, b"\x01" * p.MAX_PAYLOAD)
    wire = p.encode_frame(frame)
    assert len(wire) == p.MAX_WIRE
    assert decoded_frames(wire) == [frame]
    with pytest.raises(ValueError):
        p.Frame(p.MsgType.RESULT, 1, b"\x01" * (p.MAX_PAYLOAD + 1))


@given(frame_lists, st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6))
def test_noise_between_frames_costs_nothing(sent, noises):
    wire = b""
    for i, f in enumerate(sent):
        wire += noises[i % len(noises)] + p.encode_frame(f)
    assert only_frames(decoded_frames(wire)) == sent


DAMAGE = st.sampled_from(["flip", "drop", "dup", "cut", "flip3"])


@settings(max_examples=200)
@given(frame_lists, st.data(), DAMAGE)
def test_damage_never_yields_a_frame_that_was_not_sent(sent, data, kind):
    wires = [bytearray(p.encode_frame(f)) for f in sent]
    hit = data.draw(st.integers(0, len(sent) - 1), label="damaged frame")
    w = wires[hit]
    pos = data.draw(st.integers(1, len(w) - 2), label="position")  # inside the frame
    if kind == "flip":
        w[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "flip3":
        for q in data.draw(st.lists(st.integers(0, len(w) - 1), min_size=3, max_size=3,
                                    unique=True)):
            w[q] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "drop":
        del w[pos]
    elif kind == "dup":
        w.insert(pos, w[pos])
    else:
        del w[pos:]  # cut: the rest never arrives
    got = only_frames(decoded_frames(b"".join(wires)))
    assert got == sent[:hit] + sent[hit + 1:]  # the damaged one is gone, nothing else


@settings(max_examples=50)
@given(frames, st.data())
def test_every_single_bit_flip_is_rejected(frame, data):
    wire = p.encode_frame(frame)
    positions = data.draw(st.lists(st.integers(1, len(wire) - 2), min_size=1, max_size=40))
    for pos in positions:
        for bit in range(8):
            bad = bytearray(wire)
            bad[pos] ^= 1 << bit
            assert only_frames(decoded_frames(bytes(bad))) == []


def test_another_version_is_reported_not_parsed():
    body = p.HEADER.pack(2, p.MsgType.IDENTIFY, 9, 3) + b"abc"
    raw = body + p.CRC.pack(p.crc32(body))
    items = decoded_frames(b"\x00" + p.cobs_encode(raw) + b"\x00")
    assert items == [p.Rejected("version", len(p.cobs_encode(raw)), 2, p.MsgType.IDENTIFY, 9)]


def test_overlong_run_is_dropped_with_bounded_memory_and_the_next_frame_survives():
    good = p.Frame(p.MsgType.ACK, 5, b"ok")
    dec = p.StreamDecoder()
    items = []
    for _ in range(20):
        items += dec.feed(b"\x55" * 1000)
        assert len(dec.buffer) <= p.MAX_ENCODED
    items += dec.feed(p.encode_frame(good))
    assert [i.reason for i in items if isinstance(i, p.Rejected)] == ["too_long"]
    assert only_frames(items) == [good]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\x05\x01\x02", "cobs"),  # block of 4 announced, 2 present
    (b"\x04\x01\x02\x03", "short"),
])
def test_reject_reasons(raw, reason):
    assert decoded_frames(b"\x00" + raw + b"\x00")[0].reason == reason


def test_length_field_must_match():
    body = p.HEADER.pack(1, 1, 0, 5) + b"abc"
    raw = body + p.CRC.pack(p.crc32(body))
    assert decoded_frames(p.cobs_encode(raw) + b"\x00")[0].reason == "length"


# ---------------------------------------------------------------------------- payloads

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@given(st.builds(
    p.Identify, flags=st.integers(0, 255), max_chunk_samples=st.integers(1, 0xFFFF),
    sample_rate_hz=st.integers(1, 2**32 - 1), window_samples=st.integers(0, 2**32 - 1),
    window_hop_samples=st.integers(0, 2**32 - 1), frames_per_window=st.integers(1, 0xFFFF),
    n_ceps=st.integers(1, 0xFFFF), model_sha256_prefix=st.binary(min_size=8, max_size=8),
    spec_sha256_prefix=st.binary(min_size=8, max_size=8),
    threshold=st.floats(0, 1), output_scale=st.just(1 / 256), output_zero_point=st.integers(
        -128, 127), normal_index=st.just(0), device_id=names, firmware_version=names,
    class_names=st.lists(names, min_size=1, max_size=5).map(tuple)))
def test_identify_round_trip(ident):
    assert p.Identify.unpack(ident.pack()) == ident


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(-32768, 32767), min_size=1,
                                           max_size=1000))
def test_audio_round_trip(offset, samples):
    a = p.Audio(offset, np.array(samples, np.int16))
    b = p.Audio.unpack(a.pack())
    assert b.offset == offset and b.samples.dtype == np.int16
    assert np.array_equal(b.samples, a.samples)


@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
       st.lists(st.integers(-128, 127), min_size=1, max_size=8), st.booleans())
def test_result_round_trip(index, received, scores, with_features):
    feats = np.arange(74 * 13, dtype=np.int16).reshape(74, 13) - 400 if with_features else None
    r = p.Result.unpack(p.Result(index, received, np.array(scores, np.int8), feats).pack())
    assert (r.window_index, r.samples_received, r.scores.tolist()) == (index, received, scores)
    assert (r.features is None) == (feats is None)
    if feats is not None:
        assert np.array_equal(r.features, feats)
        assert len(p.Result(index, received, np.array(scores, np.int8), feats).pack()) \
            <= p.MAX_PAYLOAD


@given(st.sampled_from(list(p.Decision)), st.floats(0, 1, width=32), st.integers(0, 0xFFFF),
       st.integers(0, 2**32 - 1), st.lists(st.integers(-2**31, 2**31 - 1), max_size=8))
def test_done_round_trip(decision, prob, windows, received, sums):
    d = p.Done(decision, prob, windows, received, tuple(sums))
    assert p.Done.unpack(d.pack()) == d


def test_small_messages_round_trip_and_truncation_is_a_payload_error():
    msgs = [p.Start(2000, 123456, p.FLAG_FEATURES), p.Ack(p.MsgType.AUDIO, 99, 3),
            p.Error(p.ErrorCode.BUSY, p.MsgType.START, "a session is running")]
    for m in msgs:
        raw = m.pack()
        assert type(m).unpack(raw) == m
        for cut in range(len(raw)):
            with pytest.raises(p.PayloadError):
                type(m).unpack(raw[:cut])
        with pytest.raises(p.PayloadError):
            type(m).unpack(raw + b"\x00")
    for bad in (b"", b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x01"):
        with pytest.raises(p.PayloadError):
            p.Audio.unpack(bad)
