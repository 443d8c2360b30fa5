"""The `ecrf` command: serve, token, demo, db upgrade, audit verify, randomisation generate|verify, client."""

import argparse
import sys

from ecrf.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ecrf", description="eCRF backend with a FHIR R4 door")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate the database, load the study and serve HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    token = commands.add_parser("token", help="print a signed development JWT")
    token.add_argument("--role", required=True)
    token.add_argument("--site", action="append", help="site id (repeat for several)")
    token.add_argument("--sub", default=None)
    token.add_argument("--ttl", type=int, default=60, help="minutes")
    token.add_argument("--scope", action="append", help="SMART system scope (repeat for several)")

    demo = commands.add_parser("demo", help="load a few synthetic subjects through the public API")
    demo.add_argument("--url", default=None, help="a running server; default: this database, in process")

    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])

    audit = commands.add_parser("audit", help="audit trail")
    audit.add_argument("action", choices=["verify"])

    randomisation = commands.add_parser("randomisation", help="allocation lists (randomisation manager)")
    randomisation.add_argument(
        "action",
        choices=["generate", "verify"],
        help="generate: the lists of strata that have none (never regenerates); "
        "verify: regenerate from the secret and compare, exit 1 on any difference",
    )
    from ecrf.smart import cli as client_cli

    client_cli.add_parser(commands)

    args = parser.parse_args(argv)
    settings = Settings()
    handler = {
        "serve": _serve,
        "token": _token,
        "demo": _demo,
        "db": _db,
        "audit": _audit,
        "randomisation": _randomisation,
        "client": client_cli.run,
    }[args.command]
    return handler(settings, args) or 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ecrf.app import create_app
    from ecrf.runtime import Runtime
    from ecrf.store.migrate import upgrade

    runtime = Runtime.start(settings)
    upgrade(runtime.engine)
    if runtime.randomisation is not None:  # generated once per study, at the first start
        from ecrf.randomisation.service import generate

        generate(runtime.engine, settings, runtime.study, runtime.randomisation)
    app = create_app(runtime=runtime)
    url = f"http://{args.host}:{args.port}"
    print(f"eCRF serving study {runtime.study.id} at {url}  (database: {_safe_url(settings.database_url)})", flush=True)
    print(f"API docs: {url}/docs   FHIR base: {url}/fhir   health: {url}/healthz", flush=True)
    print("Get a token: ecrf token --role investigator --site S01", flush=True)
    print(f"Clinicians' screens: open {url}/ in a browser", flush=True)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="info", access_log=False, log_config=_log_config()
    )
    StoppingServer(config).run()
    return 0


def StoppingServer(config):  # noqa: N802 - a class made on first use, so uvicorn is imported only to serve
    """uvicorn's server, which on SIGTERM/SIGINT also cancels the statements requests still run (a long
    search must not hold the shutdown until its statement timeout)."""
    import uvicorn

    from ecrf.db import cancel_running

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            cancel_running("shutdown")

    return Server(config)


def _log_config() -> dict:
    """uvicorn's own logging, plus the service's loggers (the PHI-free request log `ecrf.access`, incidents
    `ecrf.errors`, the export worker) at INFO on the same stream; uvicorn's access line stays off."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["ecrf"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from ecrf.auth.tokens import TokenError, issue_dev_token

    try:
        print(
            issue_dev_token(
                settings, role=args.role, sites=args.site, sub=args.sub, ttl_minutes=args.ttl, scopes=args.scope
            )
        )
    except TokenError as error:
        print(f"ecrf token: {error}", file=sys.stderr)
        return 2
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from ecrf.demo import run_demo

    return run_demo(settings, args.url)


def _db(settings: Settings, args: argparse.Namespace) -> int:
    from ecrf.db import make_engine
    from ecrf.store.migrate import upgrade

    upgrade(make_engine(settings.database_url))
    print(f"database at head: {_safe_url(settings.database_url)}")
    return 0


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from ecrf.audit.service import verify
    from ecrf.db import make_engine, snapshot

    breaks = 0
    with snapshot(make_engine(settings.database_url)) as session:  # one view of the chain while others append
        for problem in verify(session):
            breaks += 1
            print(f"AUDIT CHAIN BROKEN at entry {problem.seq}: {problem.problem}", file=sys.stderr)
    if breaks:
        print(f"audit verify: FAILED, {breaks} problem(s)", file=sys.stderr)
        return 1
    print("audit verify: chain intact")
    return 0


def _randomisation(settings: Settings, args: argparse.Namespace) -> int:
    from ecrf.randomisation import service
    from ecrf.randomisation.scheme import load_scheme
    from ecrf.store.migrate import upgrade
    from study_model.loader import load_study
    from ecrf.db import make_engine

    study = load_study(settings.study_dir)
    scheme = load_scheme(settings.study_dir, study)
    if scheme is None:
        print(f"ecrf randomisation: study {study.id} has no randomisation.yaml", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    upgrade(engine)
    if args.action == "generate":
        made = service.generate(engine, settings, study, scheme)
        print(
            f"randomisation generate: {len(made)} list(s) generated"
            + (f" ({', '.join(made)})" if made else "; every stratum already has its list")
        )
        return 0
    problems = service.verify(engine, settings, study, scheme)
    for problem in problems:
        print(f"RANDOMISATION LIST {problem.stratum}: {problem.problem}", file=sys.stderr)
    if problems:
        print(f"randomisation verify: FAILED, {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"randomisation verify: {len(scheme.strata)} list(s) intact")
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


if __name__ == "__main__":
    sys.exit(main())
