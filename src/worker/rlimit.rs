//! The process's open-file limit: raised from the soft to the hard limit at
//! start (every connection, pooled upstream connection and listener is a
//! file descriptor), with a warning naming the numbers when the configured
//! connection caps could still exceed it.

use crate::config::Config;

/// What the start-up check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before, and after raising it.
    pub before: u64,
    pub now: u64,
    /// Descriptors the configuration may need at its caps.
    pub needed: u64,
}

/// Descriptors the config can hold at its caps: per worker, its client
/// connections, its idle pool to every server, and its listeners.
pub fn needed(config: &Config, workers: &[usize]) -> u64 {
    let servers: u64 = config
        .upstreams
        .iter()
        .map(|g| g.servers.len() as u64)
        .sum();
    let listeners = config.listeners.len() as u64 + u64::from(config.admin.is_some());
    workers
        .iter()
        .map(|&core| {
            let p = config.workers.for_core(core);
            (p.max_connections as u64)
                .saturating_add((p.upstream_pool_size as u64).saturating_mul(servers))
                .saturating_add(listeners)
        })
        .fold(0, u64::saturating_add)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and warns when the
/// config can need more than that.
pub fn raise(config: &Config, workers: &[usize]) -> std::io::Result<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
            tracing::info!(
                from = before,
                to = limit.rlim_cur,
                "raised the open-file limit to the hard limit"
            );
        }
    }
    let found = FileLimit {
        before,
        now: limit.rlim_cur,
        needed: needed(config, workers),
    };
    if found.needed > found.now {
        tracing::warn!(
            open_file_limit = found.now,
            needed = found.needed,
            workers = workers.len(),
            "the open-file limit ({}) is below what the connection caps can hold ({} = max_connections + upstream_pool_size x servers + listeners, summed over {} workers): \
             connections will fail with 'too many open files' at load; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower workers.max_connections",
            found.now,
            found.needed,
            workers.len()
        );
    }
    Ok(found)
}
