//! The runtime the uploaders run on: its own threads, at a lower CPU priority than
//! file service. Uploading is throughput work that can take every core (reading the
//! cache disk, checksums, HTTP); an NFS call waiting behind it would pay for it in
//! latency (a 5 TiB sparse file streaming zeros made 4 KiB FILE_SYNC writes of another
//! client wait 100-400 ms on two cores). With the uploaders' threads at nice
//! [`NICE`], the kernel runs file service first and uploads use what is left.

/// The uploaders' nice value (file service runs at 0). Raising it needs no privilege.
pub const NICE: i32 = 10;

pub struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    pub fn start() -> std::io::Result<Background> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("upload")
            .on_thread_start(lower_thread_priority)
            .enable_all()
            .build()?;
        Ok(Background(Some(rt)))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for Background {
    /// Never blocks (it may be dropped on an async thread); tasks still running are
    /// cancelled where they wait.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's CPU priority to [`NICE`] (on Linux, nice values are
/// per thread). Best effort: a failure leaves the thread at the normal priority.
pub fn lower_thread_priority() {
    // SAFETY: gettid and setpriority take no pointers; they act on this thread only.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICE) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the upload thread's priority");
    }
}
