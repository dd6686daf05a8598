"""neve.dataplane: where rows travel, apart from the control plane.

- ``balancer``: least-outstanding choice among a service's ready instances;
- ``router``: the one router (balancing, retry on another instance, Retry-After policy, the
  queue-budget header), sync and async, used by the ingress proxies, by ``ServiceManager.invoke``
  (SQL service functions) and by the client's ``mv.run(..., service_name=)``;
- ``targets``: what a service is to the data plane (``IngressTarget``) and its catalog look-up;
- ``routes``: the route table the control plane publishes (long-poll) and the proxies follow;
- ``proxy``: an ingress proxy process; ``proxies``: starting and re-adopting them.
"""
