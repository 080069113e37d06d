"""Register the project's work pools, concurrency limits and deployments on a Prefect server.

Usage: PREFECT_API_URL=http://HOST:PORT/api python flows/deploy.py [PARAMS] [--source GIT_URL]

`mycelium orchestrate up` runs this after it starts the server. Against a remote server, pass
--source with a git URL that the remote workers can clone.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from mycelium.runtime import configure_environment

ROOT = configure_environment(Path.cwd())

from mycelium.config import load_params  # noqa: E402
from mycelium.orchestration.concurrency import COLD_STORE_LIMIT, ensure_limit  # noqa: E402
from mycelium.orchestration.deployments import create_pools, register_deployments  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default="params.yaml", help="settings file (default: params.yaml)")
    parser.add_argument("--source", default=None, help="git URL workers get the code from (default: this folder)")
    parser.add_argument("--output", type=Path, default=None, help="also write the pools and deployment ids here (JSON)")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("PREFECT_API_URL is not set; point it at the server, e.g. http://127.0.0.1:4200/api.")
    params_path = (ROOT / args.params).resolve()
    settings = load_params(params_path).orchestration

    # Pools and limits first: a deployment names its pool, a training its limit.
    pools = create_pools(settings)
    ensure_limit(COLD_STORE_LIMIT)

    deployments = register_deployments(ROOT, params_path, settings, source=args.source)
    registered = json.dumps({"pools": pools, "deployments": deployments}, indent=1)
    print(registered)
    if args.output:
        args.output.write_text(registered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
