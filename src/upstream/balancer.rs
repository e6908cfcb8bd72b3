//! Per-worker load balancing within an upstream group: plain round-robin
//! when all weights are equal, nginx's smooth weighted round-robin otherwise
//! (a server of weight 3 next to one of weight 1 gets a a b a, not a a a b).

/// Balancer state for one group on one worker.
#[derive(Debug)]
pub struct Balancer {
    /// Server indices (into the worker's server list).
    servers: Vec<usize>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        next: usize,
    },
    SmoothWeighted {
        weights: Vec<i64>,
        current: Vec<i64>,
        total: i64,
    },
}

impl Balancer {
    /// `members` are `(server index, weight)`. Workers start at different
    /// offsets so that their first requests do not all hit the same server.
    pub fn new(members: &[(usize, u32)], worker_index: usize) -> Balancer {
        let servers: Vec<usize> = members.iter().map(|m| m.0).collect();
        let equal = members.windows(2).all(|w| w[0].1 == w[1].1);
        let kind = if equal {
            Kind::RoundRobin {
                next: worker_index % servers.len().max(1),
            }
        } else {
            let weights: Vec<i64> = members.iter().map(|m| i64::from(m.1)).collect();
            Kind::SmoothWeighted {
                total: weights.iter().sum(),
                current: vec![0; weights.len()],
                weights,
            }
        };
        Balancer { servers, kind }
    }

    /// The server for the next request.
    pub fn pick(&mut self) -> usize {
        match &mut self.kind {
            Kind::RoundRobin { next } => {
                let i = *next;
                *next = if i + 1 == self.servers.len() {
                    0
                } else {
                    i + 1
                };
                self.servers[i]
            }
            Kind::SmoothWeighted {
                weights,
                current,
                total,
            } => {
                let mut best = 0;
                for i in 0..weights.len() {
                    current[i] += weights[i];
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= *total;
                self.servers[best]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles() {
        let mut b = Balancer::new(&[(10, 1), (11, 1), (12, 1)], 0);
        let picks: Vec<usize> = (0..6).map(|_| b.pick()).collect();
        assert_eq!(picks, vec![10, 11, 12, 10, 11, 12]);
    }

    #[test]
    fn workers_start_at_different_servers() {
        let mut b = Balancer::new(&[(0, 1), (1, 1)], 1);
        assert_eq!(b.pick(), 1);
    }

    #[test]
    fn smooth_weighted_spreads_the_heavy_server() {
        let mut b = Balancer::new(&[(0, 5), (1, 1), (2, 1)], 0);
        let picks: Vec<usize> = (0..7).map(|_| b.pick()).collect();
        // nginx's documented sequence for weights 5,1,1.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_shares_are_exact_over_a_cycle() {
        let mut b = Balancer::new(&[(0, 3), (1, 1)], 0);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[b.pick()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }
}
