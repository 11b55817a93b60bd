#!/usr/bin/env python3
"""Strict-format valid rate of `humanlm simulate` per mode over the shipped scenarios.

Runs the release binary once per scenario and mode (default checkpoint, the method's evaluation
sampling) and prints, per mode, how many samples kept the tag format, plus the stop reasons.
Usage: python3 scripts/valid_rates.py [--modes humanlm,response,joint] [--per-domain K]
       [--checkpoint NAME] [--prompts SET]
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time

BIN = os.environ.get("HUMANLM_BIN", "target/release/humanlm")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="response,joint,humanlm")
    ap.add_argument("--per-domain", type=int, default=0, help="first K scenarios of each domain (0 = all)")
    ap.add_argument("--checkpoint", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=None, help="prompt set (default: the checkpoint's)")
    args = ap.parse_args()
    listing = json.loads(subprocess.run([BIN, "scenarios", "--json"], check=True, capture_output=True, text=True).stdout)
    per_domain = collections.Counter()
    ids = []
    for s in listing:
        per_domain[s["domain"]] += 1
        if not args.per_domain or per_domain[s["domain"]] <= args.per_domain:
            ids.append(s["id"])
    results = {}
    for mode in args.modes.split(","):
        valid, stops, started = 0, collections.Counter(), time.time()
        calls_valid, calls_seen = collections.Counter(), collections.Counter()
        for sid in ids:
            out = subprocess.run(
                [BIN, "simulate", "--checkpoint", args.checkpoint, "--scenario", sid, "--mode", mode, "--json"]
                + (["--prompts", args.prompts] if args.prompts else []),
                capture_output=True, text=True,
            )
            if out.returncode != 0:
                print(f"{mode} {sid}: {out.stderr.strip()}", file=sys.stderr)
                continue
            sample = json.loads(out.stdout)["samples"][0]
            valid += sample["valid"]
            stops.update(sample["stop_reasons"].values())
            for call, o in sample["outputs"].items():
                calls_seen[call] += 1
                calls_valid[call] += o["valid"]
        per_call = {c: f"{calls_valid[c]}/{calls_seen[c]}" for c in calls_seen}
        results[mode] = {"scenarios": len(ids), "valid": valid, "per_call_valid": per_call,
                         "stop_reasons": dict(stops), "seconds": round(time.time() - started)}
        print(f"{mode:9s} strict-valid {valid}/{len(ids)}  per call {per_call}  stop reasons {dict(stops)}  ({results[mode]['seconds']} s)", flush=True)
    print(json.dumps({"checkpoint": args.checkpoint, "prompts": args.prompts, "results": results}))


if __name__ == "__main__":
    main()
