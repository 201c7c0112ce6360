"""Routing: shortest paths by propagation delay and forwarding tables, as pure functions."""

from meshemu.routing.forwarding import RouteChanges, forwarding_state, next_hops, table_changes
from meshemu.routing.states import ForwardingStates, WatchedColumns
from meshemu.routing.paths import Route, ground_station_distances_m, shortest_paths_from, shortest_route, split_graph

__all__ = ["ForwardingStates", "Route", "WatchedColumns", "RouteChanges", "forwarding_state", "ground_station_distances_m", "next_hops", "shortest_paths_from",
           "shortest_route", "split_graph", "table_changes"]
