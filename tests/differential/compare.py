"""Compares the runs of tests/differential/run and writes its report (Markdown, on stdout).

Each suite ran three times on identically initialized servers: directly twice (direct-1, direct-2) and
through Veneer. A test (by its JUnit outcome) or a SQL file (by its whole output) is

- identical when the Veneer run gives what direct-1 gives;
- varying when the two direct runs already differ: Postgres itself varies there from run to run, or
  when the test is known to depend on timing that any proxy changes (TIMING_DEPENDENT, with why);
- numbers only (SQL files) when the outputs differ in nothing but numbers of five digits or more,
  the width of the columns printing them, the order of lines, and the line numbers psql puts before
  a notice. Object ids (OIDs, query ids) are handed out by the server in the order objects are made,
  and a session through Veneer gets another backend slot than a lone direct one (Veneer's own
  sessions hold some), so the temporary schemas its tests make take other OIDs, and results ordered
  by OID come in another order. psql numbers a notice with the line of its script it is reading when
  the notice arrives, which for a notice raised during COPY FROM STDIN depends on timing;
- a Veneer difference otherwise.

Exit status 1 when any Veneer difference was found.
"""

import argparse
import difflib
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

RUNS = ("direct-1", "direct-2", "veneer")

# Tests whose outcome depends on timing that any proxy in the path changes, with why. Measured on
# this project's 2-core machine, 20 runs each: how often they fail directly and through Veneer
# (before and after changes), which tells a timing dependence from a transparency fault.
TIMING_DEPENDENT = {
    "tests.test_execute.TestExecuteMany::test_executemany_server_failure_during_writes":
        "asserts that executemany stopped sending rows before the 128th once the server's error "
        "arrived: a proxy's socket buffers take more of the 4 MB of rows before the error gets "
        "back (fails 1/20 directly, 9/20 through the Veneer of before this change, 13/20 after; "
        "the error and the empty table are the same)",
}


def outcomes(path):
    """Test id -> outcome (passed, failed, error, skipped) of one JUnit file."""
    result = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                break
        result[test] = outcome
    return result


def sql_outputs(directory):
    """File name -> its psql output."""
    return {p.name: p.read_text(errors="replace") for p in sorted(directory.glob("*.out"))}


def numbers_blurred(text):
    """The lines of `text`, sorted, with every number of five digits or more (object ids start at
    16384; query ids are larger still) and psql's line numbers made alike, and the padding and
    rules whose width follows them. Sorted, because results ordered by OID come in another order
    when the OIDs differ. Smaller numbers (counts, values) stay as they are."""
    text = re.sub(r"(?m)^psql:([^:\n]*):\d+:", r"psql:\1:0:", text)
    text = re.sub(r"-?\d{5,}", "0", text)
    text = re.sub(r"-+", "-", text)
    return sorted(re.sub(r"[ \t]+", " ", text).splitlines())


def classify(runs):
    """Splits the items of three runs (dicts item -> result) into identical, varying, numbers-only
    and Veneer differences."""
    first, second, veneer = runs
    identical, varying, numbers, different = [], [], [], []
    for item in sorted(set(first) | set(veneer)):
        a, b = first.get(item), veneer.get(item)
        if a == b:
            identical.append(item)
        elif a != second.get(item) or item in TIMING_DEPENDENT:
            varying.append(item)
        elif isinstance(a, str) and isinstance(b, str) and numbers_blurred(a) == numbers_blurred(b):
            numbers.append(item)
        else:
            different.append(item)
    return identical, varying, numbers, different


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=pathlib.Path, required=True)
    parser.add_argument("--suites", required=True)
    parser.add_argument("--veneer", default="unknown")
    parser.add_argument("--share", default="100")
    parser.add_argument("--seed", default="1")
    args = parser.parse_args()

    print("# Differential transparency: the same suites directly and through Veneer\n")
    print(f"Veneer {args.veneer}; see tests/differential/run for how the runs are made.\n")
    print(
        "| suite | items | identical through Veneer | varying (between direct runs, or timing) "
        "| numbers only (OIDs) | Veneer differences |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    details = []
    found = False
    for suite in args.suites.split():
        if suite == "regress":
            runs = [sql_outputs(args.runs / f"{suite}-{r}") for r in RUNS]
            unit = f"SQL files (share {args.share} %, seed {args.seed})"
        else:
            runs = [outcomes(args.runs / f"{suite}-{r}.xml") for r in RUNS]
            unit = "tests"
        identical, varying, numbers, different = classify(runs)
        found |= bool(different)
        total = len(set(runs[0]) | set(runs[2]))
        print(
            f"| {suite} | {total} {unit} | {len(identical)} | {len(varying)} | {len(numbers)} "
            f"| {len(different)} |"
        )
        kinds = (
            ("varies between direct runs", varying),
            ("numbers only", numbers),
            ("differs through Veneer", different),
        )
        for kind, items in kinds:
            for item in items:
                details.append((suite, kind, item, runs))
    for suite, kind, item, runs in details:
        print(f"\n## {suite}: {item} ({kind})\n")
        if item in TIMING_DEPENDENT:
            print(f"Timing-dependent: {TIMING_DEPENDENT[item]}.\n")
        first, second, veneer = (r.get(item, "(absent)") for r in runs)
        if suite != "regress":
            print(f"direct-1: {first}; direct-2: {second}; Veneer: {veneer}")
            continue
        diff = difflib.unified_diff(
            first.splitlines(), veneer.splitlines(), "direct-1", "veneer", lineterm="", n=1
        )
        lines = list(diff)
        print("```diff")
        print("\n".join(lines[:60]))
        if len(lines) > 60:
            print(f"... {len(lines) - 60} more lines")
        print("```")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
