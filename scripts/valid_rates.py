#!/usr/bin/env python3
"""Strict-format valid rate of `humanlm simulate` per mode over the shipped scenarios.

Runs the release binary once per scenario and mode (default checkpoint, the method's evaluation
sampling) and prints, per mode, how many samples kept the tag format, plus the stop reasons.
Usage: python3 scripts/valid_rates.py [--modes humanlm,response,joint] [--limit N] [--checkpoint NAME]
"""
import argparse
import collections
import json
import subprocess
import sys
import time

BIN = "target/release/humanlm"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="response,joint,humanlm")
    ap.add_argument("--limit", type=int, default=0, help="first N scenarios only (0 = all)")
    ap.add_argument("--checkpoint", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default="humanlm")
    args = ap.parse_args()
    listing = json.loads(subprocess.run([BIN, "scenarios", "--json"], check=True, capture_output=True, text=True).stdout)
    ids = [s["id"] for s in listing]
    if args.limit:
        ids = ids[: args.limit]
    results = {}
    for mode in args.modes.split(","):
        valid, stops, started = 0, collections.Counter(), time.time()
        for sid in ids:
            out = subprocess.run(
                [BIN, "simulate", "--checkpoint", args.checkpoint, "--prompts", args.prompts, "--scenario", sid, "--mode", mode, "--json"],
                capture_output=True, text=True,
            )
            if out.returncode != 0:
                print(f"{mode} {sid}: {out.stderr.strip()}", file=sys.stderr)
                continue
            sample = json.loads(out.stdout)["samples"][0]
            valid += sample["valid"]
            stops.update(sample["stop_reasons"].values())
        results[mode] = {"scenarios": len(ids), "valid": valid, "stop_reasons": dict(stops), "seconds": round(time.time() - started)}
        print(f"{mode:9s} strict-valid {valid}/{len(ids)}  stop reasons {dict(stops)}  ({results[mode]['seconds']} s)", flush=True)
    print(json.dumps({"checkpoint": args.checkpoint, "prompts": args.prompts, "results": results}))


if __name__ == "__main__":
    main()
