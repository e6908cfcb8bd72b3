//! Binary upgrade without a refused connection: the running process hands
//! every listening socket (each worker's SO_REUSEPORT socket of each
//! listener, and the admin API's) to a new process over a Unix socket
//! (`SCM_RIGHTS`), so the kernel's accept queues live on in it; the old
//! process stops accepting only once the new one says it accepts, then
//! drains and exits.
//!
//! Why hand sockets over instead of letting the new process bind its own
//! beside them: closing one socket of a SO_REUSEPORT group drops the
//! connections waiting in its queue (reset, unless `net.ipv4.tcp_migrate_req`
//! is set), and the kernel had already spread new connections over every
//! socket of the group. A handed-over socket is never closed: both
//! processes hold it until the old one is done with it.
//!
//! The rendezvous is a Linux abstract Unix socket named after the config
//! file (nothing on disk to clean up); only a process of the same user (or
//! root) is answered. Records, one `SOCK_SEQPACKET` message each:
//! new -> old `take`; old -> new one record per batch of sockets (a JSON
//! list of `{"address", "admin"}`, the descriptors attached), then `end`;
//! new -> old `ready` once every worker of the new process accepts.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// Descriptors per record (the kernel takes at most 253 per message).
const BATCH: usize = 200;
/// How long either side waits for the other's next record.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Every listening socket the workers hold, for a handover: one per
/// worker and listener (and the admin API's), duplicated.
#[derive(Default)]
pub struct Sockets {
    held: Mutex<Vec<Held>>,
}

struct Held {
    address: SocketAddr,
    worker: usize,
    admin: bool,
    fd: OwnedFd,
}

impl Sockets {
    /// Worker `worker` listens on `fd` for `address`.
    pub fn register(&self, address: SocketAddr, worker: usize, admin: bool, fd: RawFd) {
        // SAFETY: `fd` is an open socket the caller owns; dup gives us our own descriptor.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup >= 0 {
            // SAFETY: dup is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(dup) };
            self.lock().push(Held {
                address,
                worker,
                admin,
                fd,
            });
        }
    }

    /// Worker `worker` stopped listening on `address` (a reload removed it).
    pub fn unregister(&self, address: SocketAddr, worker: usize) {
        self.lock()
            .retain(|h| !(h.address == address && h.worker == worker && !h.admin));
    }

    /// Lets go of every socket (the gateway is stopping).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a new process received: listening sockets by address.
#[derive(Default)]
pub struct Inherited {
    pub listeners: HashMap<SocketAddr, Vec<OwnedFd>>,
    pub admin: Option<OwnedFd>,
}

/// The abstract socket name the process running `config` answers on.
fn name(config: &Path) -> io::Result<SockAddr> {
    let path = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(format!("ringgate-upgrade-{hash:016x}").as_bytes());
    use std::os::unix::ffi::OsStrExt;
    SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
}

fn seqpacket() -> io::Result<Socket> {
    let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    s.set_write_timeout(Some(STEP_TIMEOUT))?;
    Ok(s)
}

/// Sends one record with `fds` attached.
fn send(socket: &Socket, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE only computes a size.
        unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize }
    };
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is CMSG_SPACE(fds) long, so its first
        // header and data fit; the data is written as raw bytes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                std::mem::size_of_val(fds),
            );
        }
    }
    // SAFETY: msg points at live buffers (iov, control) for the call's duration.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one record and the descriptors attached to it.
fn receive(socket: &Socket) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; 64 * 1024];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((BATCH * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at live buffers for the call's duration; received
    // descriptors are close-on-exec.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the upgrade socket",
        ));
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg's control buffer; CMSG_* walk within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = bytes / std::mem::size_of::<RawFd>();
                let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off in transit"));
    }
    data.truncate(n as usize);
    Ok((data, fds))
}

/// The peer runs as our user (or as root).
fn same_user(socket: &Socket) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let ok = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    } == 0;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    ok && (cred.uid == me || cred.uid == 0)
}

/// The new process's side: asks the process running `config` for its
/// sockets. Call [`Taken::ready`] once the gateway accepts on them.
pub fn take_over(config: &Path) -> io::Result<Taken> {
    let socket = seqpacket()?;
    socket.connect(&name(config)?).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no running ringgate answers for {}: {e}", config.display()),
        )
    })?;
    send(&socket, b"take", &[])?;
    let mut inherited = Inherited::default();
    loop {
        let (data, fds) = receive(&socket)?;
        if data == b"end" {
            break;
        }
        let described: Vec<serde_json::Value> = serde_json::from_slice(&data)
            .map_err(|e| io::Error::other(format!("bad upgrade record: {e}")))?;
        if described.len() != fds.len() {
            return Err(io::Error::other("an upgrade record lost descriptors"));
        }
        for (d, fd) in described.iter().zip(fds) {
            let address: SocketAddr = d["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| io::Error::other("an upgrade record without an address"))?;
            if d["admin"].as_bool() == Some(true) {
                inherited.admin = Some(fd);
            } else {
                inherited.listeners.entry(address).or_default().push(fd);
            }
        }
    }
    Ok(Taken { socket, inherited })
}

/// Sockets taken from the old process, which waits for [`Taken::ready`].
pub struct Taken {
    socket: Socket,
    pub inherited: Inherited,
}

/// The old process's end of a takeover, once the sockets are out of it.
pub struct Handover {
    socket: Socket,
}

impl Taken {
    /// The sockets, and what to tell the old process with.
    pub fn split(self) -> (Inherited, Handover) {
        (
            self.inherited,
            Handover {
                socket: self.socket,
            },
        )
    }
}

impl Handover {
    /// Tells the old process this one accepts: it stops accepting and drains.
    pub fn ready(self) -> io::Result<()> {
        send(&self.socket, b"ready", &[])
    }
}

/// The old process's side: answers one upgrade at a time on a thread of
/// its own; once a new process took the sockets and said it accepts,
/// calls `stop` (the old process drains and exits) and stops answering.
pub fn answer(
    config: &Path,
    sockets: Arc<Sockets>,
    stop: impl Fn() + Send + 'static,
) -> io::Result<()> {
    let address = name(config)?;
    let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    std::thread::Builder::new()
        .name("ringgate-upgrade".to_string())
        .spawn(move || {
            // Right after an upgrade the old process may still hold the
            // name for a moment: try again until it lets go.
            let mut tries = 0;
            while let Err(e) = listener.bind(&address) {
                tries += 1;
                if tries == 600 {
                    tracing::error!(error = %e, "upgrade: cannot answer on the upgrade socket; upgrades of this process are off");
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Err(e) = listener.listen(4) {
                tracing::error!(error = %e, "upgrade: cannot listen on the upgrade socket");
                return;
            }
            serve(listener, sockets, stop);
        })?;
    Ok(())
}

fn serve(listener: Socket, sockets: Arc<Sockets>, stop: impl Fn()) {
    loop {
        let Ok((peer, _)) = listener.accept() else {
            continue;
        };
        if !same_user(&peer) {
            tracing::warn!("upgrade: refused a process of another user");
            continue;
        }
        let _ = peer.set_read_timeout(Some(STEP_TIMEOUT));
        let _ = peer.set_write_timeout(Some(STEP_TIMEOUT));
        match hand_over(&peer, &sockets) {
            Ok(()) => {
                tracing::info!(
                    "upgrade: the new process accepts; finishing in-flight requests and exiting"
                );
                stop();
                return;
            }
            // The old process keeps serving: nothing was closed.
            Err(e) => tracing::error!(error = %e, "upgrade failed; still serving"),
        }
    }
}

fn hand_over(peer: &Socket, sockets: &Sockets) -> io::Result<()> {
    let (asked, _) = receive(peer)?;
    if asked != b"take" {
        return Err(io::Error::other("unexpected upgrade request"));
    }
    {
        let held = sockets.lock();
        for batch in held.chunks(BATCH) {
            let described: Vec<serde_json::Value> = batch
                .iter()
                .map(|h| serde_json::json!({ "address": h.address.to_string(), "admin": h.admin }))
                .collect();
            let fds: Vec<RawFd> = batch.iter().map(|h| h.fd.as_raw_fd()).collect();
            send(
                peer,
                serde_json::Value::from(described).to_string().as_bytes(),
                &fds,
            )?;
        }
        tracing::info!(
            sockets = held.len(),
            "upgrade: listening sockets handed over"
        );
    }
    send(peer, b"end", &[])?;
    let (said, _) = receive(peer)?;
    if said != b"ready" {
        return Err(io::Error::other("the new process did not start"));
    }
    Ok(())
}
