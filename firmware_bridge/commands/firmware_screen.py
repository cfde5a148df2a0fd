"""Screen a WAV recording on a device: stream it over the serial protocol, print the result.

The WAV is read and resampled (in fixed point) to the rate the device reports, the
quality gate runs on the host, and the decision is recomputed from the device's int8
window scores exactly as ``heartsound screen`` computes it; the device's own decision is
shown beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from firmware_bridge.commands.firmware import add_link_arguments

    parser.add_argument("wav", type=Path, metavar="FILE.wav", help="recording to screen")
    add_link_arguments(parser)
    parser.add_argument("--model", type=Path,
                        help="refuse unless the device runs this .tflite (compares SHA-256); "
                             "its familiarity reference, if it has one, then also refuses an "
                             "unfamiliar stethoscope on the host (without --model it cannot)")
    parser.add_argument("--features", action="store_true",
                        help="also fetch every window's int16 features (--json prints them)")
    parser.add_argument("--force", action="store_true",
                        help="abort any session first (a session that an earlier, failed run "
                             "left open is aborted anyway, with a one-line note)")


def run(args: argparse.Namespace) -> int:
    from edge.audio import read_wav_for_screening
    from firmware_bridge.client import screen_pcm
    from firmware_bridge.commands.firmware import open_client
    from firmware_bridge.commands.firmware_identify import identity_dict

    specs = _local_specs(args.model)
    reference = _reference(args.model)
    with open_client(args) as client:
        info = client.identify()
        if args.model is not None:
            _check_model(args, info)
        pcm, step = read_wav_for_screening(args.wav, info.sample_rate_hz)
        result, dev = screen_pcm(client, pcm, str(args.wav), features=args.features,
                                 force=args.force, specs=specs, step=step,
                                 familiarity=reference)
    row = result.to_dict()
    row["device"] = _device_block(identity_dict(info), dev, args.features)
    if args.json:
        print(json.dumps(row))
    else:
        print(_describe(result, row["device"]))
    if dev is not None and row["device"]["decision"] != result.decision:
        print(f"heartsound: warning: the device decided {row['device']['decision']}, its "
              f"scores give {result.decision}; its firmware computes the decision "
              "differently", file=sys.stderr)
    return 0


def _local_specs(model: Path | None) -> tuple:
    from edge.spec import DEFAULT_SPEC

    if model is None:
        return (DEFAULT_SPEC,)
    from edge.model_meta import read_model_meta

    return (read_model_meta(model).spec, DEFAULT_SPEC)


def _reference(model: Path | None):
    """The model's familiarity reference (edge.familiarity), or None: no --model, or an
    older model without one."""
    if model is None:
        return None
    from edge.model_meta import read_model_meta

    return read_model_meta(model).familiarity


def _check_model(args: argparse.Namespace, info) -> None:
    from edge.errors import DeviceError
    from edge.interpreter import model_bytes
    from firmware_bridge.protocol import model_digest

    mine = model_digest(model_bytes(args.model))
    if mine != info.model_sha256_prefix:
        raise DeviceError(f"{args.port}: device {info.device_id} runs model "
                          f"{info.model_sha256_prefix.hex()}, not {args.model} ({mine.hex()}); "
                          "flash the firmware built for that model or drop --model")


def _device_block(identity: dict, dev, with_features: bool) -> dict:
    from firmware_bridge.client import device_decision_name

    block = {"identity": identity}
    if dev is None:
        return block | {"decision": None}
    block |= {"decision": device_decision_name(dev.done),
              "probability_abnormal": round(float(dev.done.probability_abnormal), 6),
              "window_scores": dev.scores.astype(int).tolist(), "link": dev.stats.to_dict()}
    if with_features and dev.features is not None:
        block["features"] = dev.features.astype(int).tolist()
    return block


def _describe(result, device: dict) -> str:
    from edge.screening import describe

    ident = device["identity"]
    return describe(result, f"on {ident['device_id']} ({ident['firmware_version']})")
