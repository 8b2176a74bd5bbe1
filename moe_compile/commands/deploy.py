"""`moe-compile deploy` (a Triton model repository) and `moe-compile serve` (a Triton server for one)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console

from moe_compile.jsonio import print_report


def run_deploy(args: argparse.Namespace) -> int:
    from moe_compile.deploy.repository import deploy

    result = deploy(args.artifact, args.repo, args.name, backend=args.backend, max_batch=args.max_batch,
                    instances=args.instances, force=args.force, max_new_tokens=args.max_new_tokens)
    if args.json:
        print_report(result.to_json())
    else:
        print(f"{result.repo}: models {', '.join(result.models)} ({result.backend} backend)")
        for path in result.files:
            print(f"  {path}")
        print(f"serve it with: moe-compile serve --repo {result.repo}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Start tritonserver on loopback, print where it listens, serve until Ctrl-C."""
    from moe_compile.deploy.server import TritonServer

    server = TritonServer(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                          startup_timeout=args.startup_timeout)
    with Console(stderr=True).status(f"starting tritonserver for {args.repo}"):
        server.start()
    try:
        urls = {"repo": str(server.repo), "http": server.http_url, "grpc": server.grpc_url, "pid": server.process.pid}
        print(json.dumps(urls) if args.json else
              f"serving {server.repo}: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops)", flush=True)
        while server.alive():
            time.sleep(0.5)
        print(f"moe-compile: error: tritonserver exited with code {server.process.returncode}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopping tritonserver", file=sys.stderr)
        return 0
    finally:
        server.stop()
