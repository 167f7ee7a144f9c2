#!/usr/bin/env python3
"""Checks config/powermta-directives.txt against the PowerMTA User's Guide, mechanically.

Every line in the Guide's code blocks and examples that starts with a directive-shaped word
(`word-word...`) is a candidate; the candidates not on the list are printed, for a person to
sort into directives (add them, with their scope) and the rest (command names, option values,
header names). The Guide is not shipped here: give its HTML (public copy: GitHub Kira41/pmta,
`PMTA UsersGuide.html`).

    scripts/guide-directives.py PATH/TO/UsersGuide.html
"""
import html
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def listed():
    names = set()
    with open(os.path.join(ROOT, "config", "powermta-directives.txt")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                names.add(line.split(" ", 1)[1].strip())
    return names


def candidates(guide):
    found = set()
    for code in re.findall(r"<code>(.*?)</code>", guide, flags=re.S):
        text = html.unescape(re.sub(r"<[^>]+>", "", code))
        for line in text.split("\n"):
            words = line.strip().split()
            if words and re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)+", words[0]):
                found.add(words[0])
    return found


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        guide = f.read()
    missing = sorted(candidates(guide) - listed())
    print(f"{len(missing)} names in the Guide's code not on the list:")
    for name in missing:
        print(" ", name)


if __name__ == "__main__":
    main()
