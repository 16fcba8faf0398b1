//! Routing and neighbour failures.
use super::{Ctx, Finding, Rule};

pub struct NoRoute;

impl Rule for NoRoute {
    fn id(&self) -> &'static str {
        "no_route"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let dropped = c
            .story
            .drops("IP_OUTNOROUTES")
            .next()
            .or_else(|| c.story.drops("IP_INNOROUTES").next());
        if dropped.is_none() && c.errno != Some(libc::ENETUNREACH) {
            return None;
        }
        let server = c.server?;
        let ns = c.story.client_netns();
        Some(Finding {
            cause: self.id(),
            confidence: if dropped.is_some() { 0.9 } else { 0.7 },
            reason: format!(
                "there is no route to {}{}",
                server.ip(),
                ns.map_or(String::new(), |n| format!(" from netns {n}"))
            ),
            fix: format!(
                "ip route get {} (in the client's namespace); add the route or fix the address",
                server.ip()
            ),
            culprit: None,
        })
    }
}

pub struct NeighbourUnreachable;

impl Rule for NeighbourUnreachable {
    fn id(&self) -> &'static str {
        "neighbour_unreachable"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let neigh = c.story.drops("NEIGH_FAILED").next().is_some();
        let silent_unreach = c.errno == Some(libc::EHOSTUNREACH)
            && c.story.soft_errors() == 0
            && c.story.rst_received().is_none();
        if !neigh && !silent_unreach {
            return None;
        }
        let server = c.server?;
        Some(Finding {
            cause: self.id(),
            confidence: if neigh { 0.9 } else { 0.6 },
            reason: format!(
                "{} (or the gateway towards it) never answered ARP/neighbour discovery on the local link: the host is down or not on that subnet",
                server.ip()
            ),
            fix: format!("ip neigh show {0}; ping -c1 {0}; check the host is up and the address and subnet are right", server.ip()),
            culprit: None,
        })
    }
}
