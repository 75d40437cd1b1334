"""The study's dependency graph: runs and sweep nodes, in an order where needs come first."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .profile import Run, StudyProfile, SweepConfig, expand_runs, sweep_node


@dataclass
class SweepNode:
    """One init's tuning sweep as a node of the graph (its runs are decided while it runs)."""

    sweep: SweepConfig
    init: str
    needs: tuple[str, ...] = ()
    stage: str = ""
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = sweep_node(self.sweep.name, self.init)


Node = Run | SweepNode


def study_nodes(profile: StudyProfile) -> list[Node]:
    """Every run and sweep node of ``profile``, needs first (otherwise the profile's order:
    sweeps after the static runs that do not wait for them)."""
    from .sweep import sweep_grid_run

    runs = expand_runs(profile)
    nodes: list[Node] = list(runs)
    for s in profile.sweeps:
        for init in s.inits:
            needs = sweep_grid_run(profile, s, init, 1.0, 1.0).needs
            nodes.append(SweepNode(s, init, tuple(needs), s.stage))
    return topological_order(nodes)


def topological_order(nodes: list[Node]) -> list[Node]:
    """``nodes`` with every node after the nodes it needs; otherwise in the given order, with
    nodes that need a later node moved just after it."""
    by_name = {n.name: n for n in nodes}
    done: set[str] = set()
    order: list[Node] = []

    def visit(node: Node, stack: tuple[str, ...]) -> None:
        if node.name in done:
            return
        if node.name in stack:
            raise ValueError(f"cycle of needs: {' -> '.join((*stack, node.name))}")
        for need in node.needs:
            if need in by_name:
                visit(by_name[need], (*stack, node.name))
        done.add(node.name)
        order.append(node)

    for n in nodes:
        visit(n, ())
    return order


def select(nodes: list[Node], pattern: str | None = None, stage: str | None = None
           ) -> list[Node]:
    """The nodes to execute.

    Args:
        pattern: glob of node names; the nodes they need come along (transitively).
        stage: only nodes of this stage; the nodes they need are NOT brought along (they belong
            to an earlier stage, which must have run).
    """
    if stage:
        nodes = [n for n in nodes if n.stage == stage]
    if not pattern:
        return nodes
    by_name = {n.name: n for n in nodes}
    keep: set[str] = set()
    todo = [n.name for n in nodes if fnmatch.fnmatch(n.name, pattern)]
    while todo:
        name = todo.pop()
        if name not in keep and name in by_name:
            keep.add(name)
            todo.extend(by_name[name].needs)
    return [n for n in nodes if n.name in keep]
