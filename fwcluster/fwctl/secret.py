"""fwctl secret generate|check: make a strong cluster passphrase, or check
the configured one against the rule (fwcluster.core.passphrase).

generate prints the passphrase, or with --output writes it to a new file of
mode 0600 (created so, never widened first; an existing file is kept unless
--force). Copy the same file to every member.
"""
from __future__ import annotations

import os
import secrets
import sys

from fwcluster.args import fail, load_from_args
from fwcluster.core import passphrase
from fwcluster.fwctl import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("secret", help="generate or check the cluster passphrase")
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = ssub.add_parser("generate", help="print (or write) a strong random passphrase")
    g.add_argument("--length", type=int, default=passphrase.GENERATED_LENGTH, metavar="N",
                   help=f"characters (default {passphrase.GENERATED_LENGTH}: all of CARP's key; "
                        f"at most {passphrase.UCARP_MAX} when a ucarp peer shares it)")
    g.add_argument("--output", metavar="FILE", help="write it to FILE (mode 0600) instead of printing")
    g.add_argument("--force", action="store_true", help="replace FILE if it exists")
    g.set_defaults(func=generate)
    c = ssub.add_parser("check", help="check the configured secret file (exit 2 if refused)")
    c.set_defaults(func=check)


def make(length: int) -> str:
    while True:  # a draw with a pattern zxcvbn prices low (a word, "abcd") is drawn again
        text = "".join(secrets.choice(passphrase.ALPHABET) for _ in range(length))
        # in either mode: the whole passphrase and the bytes compatible CARP keys on
        if passphrase.weakness(text.encode(), carp_key_only=True) is None:
            return text


def generate(args) -> int:
    if not passphrase.MIN_LENGTH <= args.length <= 256:
        fail(f"--length: {args.length} is outside {passphrase.MIN_LENGTH}-256")
    text = make(args.length)
    if not args.output:
        print(text)
        return EXIT_OK
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_TRUNC if args.force else os.O_EXCL
    try:
        fd = os.open(args.output, flags, 0o600)
    except FileExistsError:
        fail(f"{args.output}: exists; use --force to replace it")
    except OSError as e:
        fail(f"{args.output}: {e.strerror}")
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # --force on an existing, wider file
        f.write(text + "\n")
    print(f"wrote a {args.length}-character passphrase to {args.output} (mode 0600); "
          "copy the same file to every member", file=sys.stderr)
    return EXIT_OK


def check(args) -> int:
    load_from_args(args, need_node=False, need_secret=True)  # exits 2 with the reason
    print("secret ok")
    return EXIT_OK


