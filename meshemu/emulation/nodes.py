"""Mininet's world over namespaces built in bulk: a ``Host`` for every node, and Mininet's CLI.

Mininet starts one shell per host when the host is created, which at a
thousand nodes is most of the build time. :class:`MeshHost` is a Mininet
``Host`` attached to an existing namespace whose shell starts only when first
used (``cmd``, ``sendCmd``); ``popen`` needs no shell at all. Everything else
is Mininet's own: ``cmd``, ``popen``, ``IP``, and ``mininet.cli.CLI`` with
``ping``, ``traceroute``, ``iperf``, ``tcpdump`` on any node. Names on the CLI
resolve to node (loopback) addresses, the ones the routes carry; where the
mesh routes only towards some destinations, :class:`ReachingCLI` first
routes towards every node a command line names (``p03s12 ping p40s07``).
"""

from __future__ import annotations

from mininet.cli import CLI
from mininet.link import Intf
from mininet.net import Mininet
from mininet.node import Host

from meshemu.emulation.netlink import netns_argv


def _no_move(*_):
    """Our interfaces already live in their namespaces."""


class NodeAddress(Intf):
    """A node's loopback, holding its address: what Mininet's CLI substitutes for a node name."""

    def updateIP(self):
        return self.ip


class MeshHost(Host):
    """A Mininet host inside namespace ``netns``; its shell starts on first use."""

    def __init__(self, name, netns: str, address: str, **params):
        self.netns, self.address, self._deferred = netns, address, True
        super().__init__(name, inNamespace=False, **params)  # the namespace exists already
        self._deferred = False
        self.inNamespace = True
        lo = NodeAddress("lo", node=self, port=0, moveIntfFn=_no_move, up=None)
        lo.ip, lo.prefixLen = address, 32

    def startShell(self, mnopts=None):
        if self._deferred:
            return  # Mininet's constructor asks; we wait until the shell is needed
        was, self.inNamespace = self.inNamespace, False
        try:
            super().startShell(mnopts)
        finally:
            self.inNamespace = was

    def _popen(self, cmd, **params):
        if cmd and cmd[0] == "mnexec":
            cmd = netns_argv(self.netns) + list(cmd)
        return super()._popen(cmd, **params)

    def cmd(self, *args, **kwargs):
        if self.shell is None:
            self.startShell()
        return super().cmd(*args, **kwargs)

    def sendCmd(self, *args, **kwargs):
        if self.shell is None:
            self.startShell()
        return super().sendCmd(*args, **kwargs)

    def popen(self, *args, **kwargs):
        kwargs.setdefault("mncmd", netns_argv(self.netns))
        return super().popen(*args, **kwargs)

    def defaultIntf(self):
        return self.nameToIntf["lo"]

    def IP(self, intf=None):
        return self.address if intf is None else super().IP(intf)

    def stop_shell(self):
        if self.shell is not None:
            self.terminate()

    def mountPrivateDirs(self):
        if not self._deferred:
            super().mountPrivateDirs()


class MeshLink:
    """Enough of a Mininet link for the CLI's ``net`` and ``links`` commands, with no commands run."""

    def __init__(self, intf1, intf2, emulation, index):
        self.intf1, self.intf2, self._emu, self._index = intf1, intf2, emulation, index
        intf1.link = intf2.link = self

    def __str__(self):
        return f"{self.intf1.node.name}-{self.intf1.name}<->{self.intf2.node.name}-{self.intf2.name}"

    def status(self):
        return "(OK OK)" if self._emu.mesh.link_up[self._index] else "(down down)"


def make_hosts(emulation) -> dict:
    """A :class:`MeshHost` for every node, with its links as Mininet interfaces."""
    plan = emulation.plan
    hosts = {name: MeshHost(name, ns, addr)
             for name, ns, addr in zip(plan.node_names, plan.namespaces, plan.addresses)}
    names = plan.node_names
    for l, (a, b) in enumerate(plan.links):
        ifa, ifb = plan.ifname[l]
        ip_a, ip_b = plan.link_address(l)
        i1 = Intf(ifa, node=hosts[names[a]], moveIntfFn=_no_move, up=None)
        i2 = Intf(ifb, node=hosts[names[b]], moveIntfFn=_no_move, up=None)
        (i1.ip, i1.prefixLen), (i2.ip, i2.prefixLen) = (ip_a, 31), (ip_b, 31)
        MeshLink(i1, i2, emulation, l)
    return hosts


def mininet_net(emulation) -> Mininet:
    """A ``Mininet`` object holding our hosts, for ``mininet.cli.CLI`` and scripts that expect one."""
    net = Mininet(topo=None, build=False, autoSetMacs=False, autoStaticArp=False)
    hosts = emulation.hosts()
    net.hosts = list(hosts.values())
    net.nameToNode = dict(hosts)
    net.links = [intf.link for h in net.hosts for intf in h.intfList() if intf.link and intf.link.intf1 is intf]
    return net


class ReachingCLI(CLI):
    """Mininet's CLI; a command line that names nodes makes them destinations first (``Emulation.reach``),
    so ``p03s12 ping p40s07`` works where the mesh routes only towards some nodes."""

    def __init__(self, mininet, emulation, **kwargs):
        self.emulation = emulation  # before Mininet's constructor: it runs the command loop
        super().__init__(mininet, **kwargs)

    def default(self, line):
        first, args, _ = self.parseline(line)
        named = [w for w in [first, *(args or "").split()] if w in self.mn]
        if first in self.mn and len(named) > 1:
            added = self.emulation.reach(*named)
            if added:
                print(f"meshemu: routes towards {', '.join(named)}: {added} more", flush=True)
        super().default(line)
