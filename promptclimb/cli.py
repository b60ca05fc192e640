"""The installed commands: `promptclimb-scorer`, `promptclimb-optimizer`, and `promptclimb`, which holds them all.

The services' flags are those of `python -m scorer_service` and `python -m
optimizer_service` (their own parsers, passed on unchanged); `tasks` and
`score` call a scorer through promptclimb.client's sync client and print its
answer as JSON. Those two need only the base install; the services need their
extra (`pip install 'promptclimb[scorer]'`, `[optimizer]`, or `[all]`), so they
are imported only when asked for, and a missing extra is named, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from promptclimb.client import CallError, SyncScorer, Tls
from promptclimb.scorer.v1 import scorer_pb2
from promptclimb_common.cli_help import ArgumentParser

# Commands with parsers of their own (promptclimb/optimize.py, promptclimb/export.py).
OWN_PARSERS = {
    "optimize": "one command from a CLIP model, a dataset and an LLM to a report (train, val, test)",
    "export": "write a run's answer for clip_benchmark, CuPL, or as plain text",
}
# Commands whose arguments go, unparsed, to a service's own command line.
PASSED_ON = {
    "scorer": "run the Scorer service (as promptclimb-scorer)",
    "serve": "run the Optimizer service (as promptclimb-optimizer serve)",
    "run": "optimize once in-process and write a report (as promptclimb-optimizer run)",
}


def _service_main(extra: str) -> Callable[..., int]:
    """The `main(argv, prog)` of the scorer or the optimizer; SystemExit naming the extra when it is not installed."""
    try:
        if extra == "scorer":
            from scorer_service.__main__ import main as scorer_main

            return scorer_main
        from optimizer_service.cli import main as optimizer_main

        return optimizer_main
    except ImportError as err:
        print(
            f"promptclimb: the {extra} needs what the base install leaves out ({err}); "
            f"install it with: pip install 'promptclimb[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(1) from err


def scorer() -> int:
    return _service_main("scorer")(sys.argv[1:], prog="promptclimb-scorer")


def optimizer() -> int:
    return _service_main("optimizer")(sys.argv[1:], prog="promptclimb-optimizer")


def _client_args(p: ArgumentParser) -> None:
    a = p.add_argument
    a("--scorer", default="127.0.0.1:50051", help="HOST:PORT of the scorer")
    a("--token-env", default="SCORER_TOKEN", help="environment variable holding the bearer token (unset: none)")
    a("--tls-ca", default=None, help="CA (PEM) of the scorer's certificate; enables TLS")
    a("--tls-cert", default=None, help="client certificate (PEM), for a scorer with mTLS")
    a("--tls-key", default=None, help="client key (PEM), for a scorer with mTLS")
    a("--deadline-s", type=float, default=60.0, help="deadline of the call, retries included")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="promptclimb", description="promptclimb's services and a client of the scorer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in {**OWN_PARSERS, **PASSED_ON}.items():
        commands.add_parser(name, help=help_text, add_help=False)
    tasks = commands.add_parser("tasks", help="list a scorer's tasks")
    _client_args(tasks)
    score = commands.add_parser("score", help="score templates on a task of a scorer")
    _client_args(score)
    score.add_argument("--task", required=True, help="task id")
    score.add_argument(
        "--split", choices=["train", "test"], default="train", help="test needs a token with the test right"
    )
    score.add_argument("templates", nargs="+", help="templates, each with one {} where the class name goes")
    return parser


def _call(ns: argparse.Namespace) -> str:
    tls = Tls(ns.tls_ca, ns.tls_cert, ns.tls_key) if ns.tls_ca or ns.tls_cert else None
    reply: Message
    with SyncScorer(
        ns.scorer,
        token=os.environ.get(ns.token_env),
        tls=tls,
        deadline_s=ns.deadline_s,
    ) as client:
        if ns.command == "tasks":
            reply = client.list_tasks()
        else:
            split = scorer_pb2.SPLIT_TEST if ns.split == "test" else scorer_pb2.SPLIT_TRAIN
            reply = client.score(scorer_pb2.ScoreRequest(task_id=ns.task, templates=ns.templates, split=split))
    return MessageToJson(reply, preserving_proto_field_name=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "optimize":
        from promptclimb.optimize import main as optimize_main

        return optimize_main(argv[1:])
    if argv and argv[0] == "export":
        from promptclimb.export import main as export_main

        return export_main(argv[1:])
    if argv and argv[0] == "scorer":
        return _service_main("scorer")(argv[1:], prog="promptclimb scorer")
    if argv and argv[0] in PASSED_ON:
        return _service_main("optimizer")(argv, prog="promptclimb")
    parser = _parser()
    ns = parser.parse_args(argv)
    if bool(ns.tls_cert) != bool(ns.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        print(_call(ns))
    except CallError as err:
        print(f"promptclimb: {err}", file=sys.stderr)
        return 1
    return 0
