"""Ask a device who it is: id, firmware, protocol, model and front-end digests, classes."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from firmware_bridge.commands.firmware import add_link_arguments

    add_link_arguments(parser)


def identity_dict(info) -> dict:
    """IDENTIFY as JSON types (digests in hex)."""
    return {
        "device_id": info.device_id, "firmware_version": info.firmware_version,
        "protocol_version": info.protocol_version,
        "model_sha256_prefix": info.model_sha256_prefix.hex(),
        "spec_sha256_prefix": info.spec_sha256_prefix.hex(),
        "class_names": list(info.class_names), "normal_class": info.class_names[
            info.normal_index], "threshold": info.threshold,
        "sample_rate_hz": info.sample_rate_hz, "window_samples": info.window_samples,
        "window_hop_samples": info.window_hop_samples,
        "frames_per_window": info.frames_per_window, "n_ceps": info.n_ceps,
        "max_chunk_samples": info.max_chunk_samples, "features": info.features,
        "output_scale": info.output_scale, "output_zero_point": info.output_zero_point,
    }


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.commands.firmware import open_client

    with open_client(args) as client:
        info = identity_dict(client.identify())
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{args.port}: {info['device_id']} firmware {info['firmware_version']}, protocol "
          f"v{info['protocol_version']}\n  model {info['model_sha256_prefix']} (sha256 prefix), "
          f"front end {info['spec_sha256_prefix']}, {info['sample_rate_hz']} Hz, windows of "
          f"{info['frames_per_window']}x{info['n_ceps']}\n  classes "
          f"{', '.join(info['class_names'])}; threshold {info['threshold']:.4f}")
    return 0
