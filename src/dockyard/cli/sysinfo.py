"""`dockyard info`, `dockyard system df [-v]` and `dockyard system prune`, as Docker prints them."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="Go-template-style format, e.g. '{{json .}}'")


def run(verb: str, args: argparse.Namespace) -> int:
    return info(args)


def _table(rows: list[list[str]]) -> list[str]:
    """Docker's tabwriter (minwidth 10, padding 3); the last column is not padded."""
    if not rows:
        return []
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(len(rows[0]) - 1)]
    return [
        "".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + r[-1] for r in rows
    ]


def _render(template: str, data: Any) -> str:
    from dockyard.cli.gotemplate import render

    return render(template, data)


# ---------------------------------------------------------------------------- info


def info(args: argparse.Namespace) -> int:
    from dockyard import __version__
    from dockyard.cli.containers import engine
    from dockyard.engine.stats import human_binary
    from dockyard.engine.system import info as server_info

    doc = server_info(engine(args))
    doc["ClientInfo"] = {"Version": __version__, "Context": "default", "Debug": False}
    if args.format:
        print(_render(args.format, doc))
        return 0
    plugins = doc["Plugins"]
    lines = [
        "Client:",
        f" Version:    {__version__}",
        " Context:    default",
        " Debug Mode: false",
        "",
        "Server:",
        f" Containers: {doc['Containers']}",
        f"  Running: {doc['ContainersRunning']}",
        f"  Paused: {doc['ContainersPaused']}",
        f"  Stopped: {doc['ContainersStopped']}",
        f" Images: {doc['Images']}",
        f" Server Version: {doc['ServerVersion']}",
        f" Storage Driver: {doc['Driver']}",
        *(f"  {key}: {value}" for key, value in doc["DriverStatus"]),
        f" Logging Driver: {doc['LoggingDriver']}",
        f" Cgroup Driver: {doc['CgroupDriver']}",
        f" Cgroup Version: {doc['CgroupVersion']}",
        " Plugins:",
        f"  Volume: {' '.join(plugins['Volume'])}",
        f"  Network: {' '.join(plugins['Network'])}",
        f"  Log: {' '.join(plugins['Log'])}",
        f" Runtimes: {' '.join(doc['Runtimes'])}",
        f" Default Runtime: {doc['DefaultRuntime']}",
        " Security Options:",
        "  seccomp",
        "   Profile: builtin",
        f" Kernel Version: {doc['KernelVersion']}",
        f" Operating System: {doc['OperatingSystem']}",
        f" OSType: {doc['OSType']}",
        f" Architecture: {doc['Architecture']}",
        f" CPUs: {doc['NCPU']}",
        f" Total Memory: {human_binary(doc['MemTotal'])}",
        f" Name: {doc['Name']}",
        f" Docker Root Dir: {doc['DockerRootDir']}",
        " Debug Mode: false",
        " Experimental: false",
        f" Live Restore Enabled: {str(doc['LiveRestoreEnabled']).lower()}",
    ]
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------- df


def _reclaimable(row: dict[str, Any]) -> str:
    from dockyard.engine.stats import human_decimal

    text = human_decimal(row["Reclaimable"])
    if row["Type"] != "Build Cache" and row["Size"] > 0:
        text += f" ({int(row['Reclaimable'] * 100 / row['Size'])}%)"
    return text


def df(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine.stats import human_decimal
    from dockyard.engine.system import disk_usage, summary

    usage = disk_usage(engine(args))
    rows = summary(usage)
    if args.format:
        for row in rows:
            shown = {
                "Type": row["Type"],
                "TotalCount": str(row["TotalCount"]),
                "Active": str(row["Active"]),
                "Size": human_decimal(row["Size"]),
                "Reclaimable": _reclaimable(row),
            }
            print(_render(args.format, shown))
        return 0
    if args.verbose:
        return _df_verbose(usage)
    table = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
    for row in rows:
        table.append(
            [
                row["Type"],
                str(row["TotalCount"]),
                str(row["Active"]),
                human_decimal(row["Size"]),
                _reclaimable(row),
            ]
        )
    print("\n".join(_table(table)))
    return 0


def _df_verbose(usage: dict[str, Any]) -> int:
    from dockyard.cli.containers import _ago, status_line
    from dockyard.engine.stats import human_decimal

    out = ["Images space usage:", ""]
    table = [
        [
            "REPOSITORY",
            "TAG",
            "IMAGE ID",
            "CREATED",
            "SIZE",
            "SHARED SIZE",
            "UNIQUE SIZE",
            "CONTAINERS",
        ]
    ]
    for image in usage["Images"]:
        short = image["Id"].split(":", 1)[-1][:12]
        tags = image["RepoTags"] or ["<none>:<none>"]
        for tag in tags:
            repo, _, name = tag.rpartition(":")
            table.append(
                [
                    repo,
                    name,
                    short,
                    f"{_ago(image['Created'])} ago",
                    human_decimal(image["Size"]),
                    human_decimal(image["SharedSize"]),
                    human_decimal(image["UniqueSize"]),
                    str(image["Containers"]),
                ]
            )
    out += _table(table)
    out += ["", "Containers space usage:", ""]
    table = [
        ["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED", "STATUS", "NAMES"]
    ]
    for c in usage["Containers"]:
        command = c["Command"]
        table.append(
            [
                c["Id"][:12],
                c["Image"],
                f'"{command[:19]}…"' if len(command) > 20 else f'"{command}"',
                str(c["LocalVolumes"]),
                human_decimal(c["SizeRw"]),
                f"{_ago(c['Created'])} ago",
                status_line(c["container"]),
                c["Names"][0],
            ]
        )
    out += _table(table)
    out += ["", "Local Volumes space usage:", ""]
    table = [["VOLUME NAME", "LINKS", "SIZE"]]
    for v in usage["Volumes"]:
        table.append([v["Name"], str(v["Links"]), human_decimal(v["Size"])])
    out += _table(table)
    out += ["", "Build cache usage: 0B", "", "CACHE ID   CACHE TYPE   SIZE   CREATED   LAST USED"]
    out[-1] += "   USAGE     SHARED"
    print("\n".join(out))
    return 0


# ---------------------------------------------------------------------------- prune


def prune(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.cli.image_transfer import prune as prune_images
    from dockyard.engine import control
    from dockyard.engine.stats import human_decimal
    from dockyard.engine.system import stored_bytes
    from dockyard.engine.volumes import VolumeStore

    if not args.force:
        what = [
            "all stopped containers",
            "all networks not used by at least one container",
        ]
        if args.volumes:
            what.append("all anonymous volumes not used by at least one container")
        if args.all:
            what += ["all images without at least one container associated to them"]
            what += ["all build cache"]
        else:
            what += ["all dangling images", "unused build cache"]
        sys.stdout.write("WARNING! This will remove:\n")
        sys.stdout.write("".join(f"  - {w}\n" for w in what))
        sys.stdout.write("\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    eng = engine(args)
    deleted, reclaimed = control.prune(eng)
    if deleted:
        print("Deleted Containers:")
        print("\n".join(deleted))
        print()
    if args.volumes:
        removed, size = VolumeStore(eng.root, eng.conn).prune(all=False)
        reclaimed += size
        if removed:
            print("Deleted Volumes:")
            print("\n".join(removed))
            print()
    before = stored_bytes(eng)
    lines = prune_images(eng.images, every=args.all)
    reclaimed += max(0, before - stored_bytes(eng))
    for line in lines:
        if not line.startswith("Total reclaimed space:"):
            print(line)
    print(f"Total reclaimed space: {human_decimal(reclaimed)}")
    return 0
