"""Ansible's linear strategy run through Mitogen (`mitogen`, requirements/controller.in).

Mitogen keeps one Python interpreter alive on each target and runs every task's module in it,
instead of starting a new interpreter per task. Under ARM64 emulation (qemu-user) starting
python3 costs 2.5-4 s, so this is what makes emulated Molecule runs and `make demo` affordable
(docs/development.md has the figures). Selected with ANSIBLE_STRATEGY=mitogen_linear; this
file only puts Mitogen's strategy on the path the repository's ansible.cfg already searches.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
