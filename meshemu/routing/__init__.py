"""Routing: shortest paths by propagation delay and forwarding tables, as pure functions."""

from meshemu.routing.forwarding import RouteChanges, column_changes, forwarding_state, next_hops, table_changes
from meshemu.routing.states import DestinationColumns, ForwardingStates, WatchedColumns, resolve_route_mode
from meshemu.routing.paths import Route, ground_station_distances_m, shortest_paths_from, shortest_route, split_graph

__all__ = ["DestinationColumns", "ForwardingStates", "Route", "WatchedColumns", "RouteChanges", "column_changes",
           "forwarding_state", "resolve_route_mode", "ground_station_distances_m", "next_hops", "shortest_paths_from",
           "shortest_route", "split_graph", "table_changes"]
