"""The ``statemachines`` and ``infra`` subcommands of ``mlblueprints``.

mlblueprints statemachines render [USECASE ...] [--out DIR]   write statemachines/<usecase>/<pattern>.asl.json
mlblueprints statemachines deploy USECASE [--image-tag T]       create or update the state machines (boto3)
mlblueprints statemachines run USECASE PATTERN [--params JSON] [--wait]
mlblueprints infra render USECASE [--out FILE] [--image-tag T] [--image-pushed] [--mwaa]  the stack's parameters
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlblueprints import runtime


def _usecases(selected: list[str]) -> list[Any]:
    from mlblueprints.config import load_usecase, load_usecases

    if selected:
        return [load_usecase(runtime.usecases_dir() / f"{u}.yaml") for u in selected]
    ucs, _errors = load_usecases(runtime.usecases_dir())
    return [uc for uc in ucs if uc.aws is not None]


def _client(uc: Any, service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=uc.aws_settings.region)


def _render(args: argparse.Namespace) -> int:
    from mlblueprints.stepfunctions import asl, deploy

    root = Path(args.out) if args.out else deploy.statemachines_dir()
    for uc in _usecases(args.usecases):
        for path in asl.write(uc, root):
            print(path)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from mlblueprints.stepfunctions import deploy

    uc = _usecases([args.usecase])[0]
    tag = args.image_tag or runtime.git_commit()[:12]
    arns = deploy.deploy(uc, _client(uc, "stepfunctions"), image_tag=tag, role_arn=args.role_arn)
    for pattern, arn in arns.items():
        print(f"{pattern}\t{arn}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from mlblueprints.stepfunctions import deploy

    uc = _usecases([args.usecase])[0]
    sfn = _client(uc, "stepfunctions")
    arn = deploy.start(uc, sfn, args.pattern, json.loads(args.params) if args.params else {}, args.name)
    print(arn)
    if not args.wait:
        return 0
    d = deploy.wait(sfn, arn, timeout=args.timeout, poll=args.poll)
    print(d["status"], d.get("error") or "", (d.get("cause") or "")[:2000])
    return 0 if d["status"] == "SUCCEEDED" else 1


def _infra_render(args: argparse.Namespace) -> int:
    from mlblueprints import infra

    uc = _usecases([args.usecase])[0]
    params = infra.parameters(
        uc, image_tag=args.image_tag or runtime.git_commit()[:12], mwaa=args.mwaa, image_pushed=args.image_pushed
    )
    for line in infra.warnings(uc, image_pushed=args.image_pushed):
        print(f"warning: {line}", file=sys.stderr)
    text = json.dumps(infra.as_cli_parameters(params), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(args.out)
    else:
        sys.stdout.write(text)
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``statemachines`` and ``infra`` to the ``mlblueprints`` command's subparsers."""
    s = sub.add_parser("statemachines", help="Step Functions: render, deploy and run the patterns' state machines")
    ss = s.add_subparsers(dest="action", required=True)
    r = ss.add_parser("render", help="render every pattern's ASL definition (default: every use case with aws)")
    r.add_argument("usecases", nargs="*", metavar="USECASE")
    r.add_argument("--out", help="directory (default: statemachines/ of the project)")
    r.set_defaults(fn=_render)
    d = ss.add_parser("deploy", help="create or update the state machines of a use case (boto3)")
    d.add_argument("usecase")
    d.add_argument("--image-tag", help="worker image tag (default: the git commit)")
    d.add_argument("--role-arn", help="state machine role (default: the one infra/ creates)")
    d.set_defaults(fn=_deploy)
    x = ss.add_parser("run", help="start an execution of a pattern's state machine")
    x.add_argument("usecase")
    x.add_argument("pattern")
    x.add_argument("--params", help='the run Params as JSON, e.g. \'{"landing_dates": ["2024-03-01"]}\'')
    x.add_argument("--name", help="execution name (default: manual-<uuid>)")
    x.add_argument("--wait", action="store_true", help="wait for the end; exit 1 unless it succeeded")
    x.add_argument("--timeout", type=float, default=6 * 3600)
    x.add_argument("--poll", type=float, default=10)
    x.set_defaults(fn=_run)

    i = sub.add_parser("infra", help="the CloudFormation templates of the aws target")
    isub = i.add_subparsers(dest="action", required=True)
    ir = isub.add_parser("render", help="the stack parameters (JSON, for --parameter-overrides file://...)")
    ir.add_argument("usecase")
    ir.add_argument("--out", help="file (default: stdout)")
    ir.add_argument("--image-tag", help="worker image tag (default: the git commit)")
    ir.add_argument("--mwaa", action="store_true", help="also create the MWAA environment")
    ir.add_argument(
        "--image-pushed",
        action="store_true",
        help="the worker image of --image-tag is pushed: create the statements function from it",
    )
    ir.set_defaults(fn=_infra_render)
