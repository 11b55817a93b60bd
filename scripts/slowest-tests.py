#!/usr/bin/env python3
"""Print the slowest tests of a nextest run from its JUnit report (default: the ci profile's).

`make test` calls it after the suite so every CI log ends with the ten slowest tests and the
suite's total; tests/README.md records such a table with the command that made it.
"""
import sys
import xml.etree.ElementTree as ET

path = sys.argv[1] if len(sys.argv) > 1 else "target/nextest/ci/junit.xml"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError) as e:
    sys.exit(f"{path}: cannot read the JUnit report: {e}")

cases = [(float(c.get("time", "0")), c.get("name", "?")) for c in root.iter("testcase")]
cases.sort(reverse=True)
total = float(root.get("time", "0"))
print(f"{len(cases)} tests, {total:.0f} s wall; the slowest {min(count, len(cases))}:")
print("| test | seconds |")
print("|---|---:|")
for secs, name in cases[:count]:
    print(f"| `{name}` | {secs:.1f} |")
