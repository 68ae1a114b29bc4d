//! The data directory's two rules, checked before the database is opened: it is on a local
//! filesystem, and one coordinator at a time uses it.
//!
//! SQLite's WAL mode keeps its index in a memory-mapped `-shm` file and coordinates through
//! POSIX locks; both work between processes of one host and not across a network filesystem
//! (<https://sqlite.org/wal.html>, "WAL does not work over a network filesystem"). Two
//! coordinators on one database (two compose replicas on one volume, a Deployment scaled to 2)
//! would each run a reaper and a writer and hand out the same jobs' leases from two views of the
//! workers. The lock is an advisory `flock` on [`LOCK_FILE`], held for the life of the process and
//! released by the kernel when it exits, however it exits.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

use crate::error::Error;

/// The lock file inside the data directory; it holds the owner's pid, host and start time.
pub const LOCK_FILE: &str = "coordinator.lock";

/// Filesystem types on which SQLite's WAL is unsafe: network and cluster filesystems (state
/// shared between hosts), matched on the type `/proc/self/mountinfo` names. FUSE filesystems
/// (`fuse.sshfs`, `fuse.s3fs`, `fuse.juicefs`, …) are mostly remote, so they are refused as a
/// family; `fuseblk` (a local block device, e.g. NTFS) is not.
const NETWORK_FILESYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "afs",
    "9p",
    "lustre",
    "gpfs",
    "ceph",
    "glusterfs",
    "gfs2",
    "ocfs2",
    "beegfs",
    "orangefs",
    "pvfs2",
    "fuse",
];

/// What a data directory is mounted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where the filesystem is mounted.
    pub mount_point: PathBuf,
    /// Its type, as the kernel names it (`ext4`, `nfs4`, `fuse.sshfs`).
    pub fs_type: String,
    /// What is mounted (a device, `server:/export`).
    pub source: String,
}

impl Mount {
    /// True if SQLite's WAL cannot be trusted on this filesystem.
    pub fn is_network(&self) -> bool {
        let base = self.fs_type.split('.').next().unwrap_or_default();
        self.fs_type != "fuseblk" && NETWORK_FILESYSTEMS.contains(&base)
    }
}

/// Held while the coordinator runs; dropping it (or the process ending) releases the directory.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

/// Creates `dir` if needed, refuses a network filesystem unless `allow_network_fs`, and takes
/// the directory's lock.
///
/// # Errors
/// [`Error::DataDir`] if the directory cannot be created or read, [`Error::NotADirectory`],
/// [`Error::NetworkFilesystem`], or [`Error::DataDirLocked`] naming the coordinator holding it.
pub(crate) fn prepare(dir: &Path, allow_network_fs: bool) -> Result<DataDirLock, Error> {
    let io = |source| Error::DataDir { path: dir.to_path_buf(), source };
    if dir.exists() && !dir.is_dir() {
        return Err(Error::NotADirectory(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let canonical = dir.canonicalize().map_err(io)?;
    match mount_of(&canonical) {
        Some(mount) if mount.is_network() => {
            if allow_network_fs {
                tracing::warn!(data_dir = %dir.display(), fs = %mount.fs_type, mount_point = %mount.mount_point.display(),
                    "data directory on a network filesystem (--allow-network-fs): SQLite's WAL may corrupt the database");
            } else {
                return Err(Error::NetworkFilesystem { path: dir.to_path_buf(), mount });
            }
        }
        Some(_) => {}
        None => tracing::debug!(data_dir = %dir.display(), "filesystem type unknown (no /proc/self/mountinfo)"),
    }
    lock(dir)
}

fn lock(dir: &Path) -> Result<DataDirLock, Error> {
    let path = dir.join(LOCK_FILE);
    let io = |source| Error::DataDir { path: path.clone(), source };
    // Not truncated on open: a refused second coordinator must still be able to read the holder.
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::DataDirLocked {
                path: dir.to_path_buf(),
                holder: if holder.is_empty() { "an unnamed process".into() } else { holder.to_string() },
            });
        }
        Err(TryLockError::Error(source)) => return Err(io(source)),
    }
    let me = format!(
        "pid {} on host {} since {}\n",
        std::process::id(),
        hostname(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(me.as_bytes()).and_then(|()| file.flush()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The filesystem `path` (absolute, canonical) lives on, from this process's mount table.
fn mount_of(path: &Path) -> Option<Mount> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_in(&table, path)
}

/// The mount of `path` in a `/proc/self/mountinfo` text: the longest mount point that is a
/// prefix of `path`; of several mounts on one point, the last (it hides the others).
fn mount_in(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS`
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let Some(mount_point) = left.split(' ').nth(4) else { continue };
        let mut right = right.split(' ');
        let (Some(fs_type), Some(source)) = (right.next(), right.next()) else { continue };
        let mount_point = PathBuf::from(unescape(mount_point));
        if !path.starts_with(&mount_point) {
            continue;
        }
        if best.as_ref().is_none_or(|b| mount_point.as_os_str().len() >= b.mount_point.as_os_str().len()) {
            best = Some(Mount { mount_point, fs_type: fs_type.to_string(), source: unescape(source) });
        }
    }
    best
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8).wrapping_add(b - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like a real table: a root on overlay, a local disk, an NFS export over part of
    /// it, a FUSE mount, a mount point with a space, and a FUSE-backed NTFS disk.
    const TABLE: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
30 22 253:1 / /srv rw,relatime shared:1 - ext4 /dev/vda1 rw
31 30 0:45 / /srv/shared rw,relatime shared:2 master:1 - nfs4 fileserver:/export/lab rw,vers=4.2
32 22 0:50 / /mnt/remote rw,nosuid,nodev - fuse.sshfs me@host:/data rw,user_id=0
33 22 253:2 / /mnt/my\\040disk rw - xfs /dev/vdb rw
34 22 8:17 / /mnt/win rw - fuseblk /dev/sdb1 rw
35 30 0:46 / /srv/shared rw,relatime - ext4 /dev/vdc rw
36 22 0:51 / /lustre rw - lustre 10.0.0.1@tcp:/fs rw
";

    fn at(path: &str) -> Mount {
        mount_in(TABLE, Path::new(path)).expect("the root matches everything")
    }

    #[test]
    fn the_longest_mount_point_wins_and_a_later_mount_hides_an_earlier() {
        assert_eq!(at("/home/me/data").fs_type, "overlay");
        assert_eq!(at("/srv/lorasweep").fs_type, "ext4");
        // /srv/shared is NFS, then an ext4 disk mounted over it: the later one is what is seen.
        assert_eq!(at("/srv/shared/db").source, "/dev/vdc");
        // A prefix of the name is not a prefix of the path.
        assert_eq!(at("/srv/sharedx").fs_type, "ext4");
        assert_eq!(at("/mnt/my disk/db").mount_point, PathBuf::from("/mnt/my disk"));
    }

    #[test]
    fn network_and_fuse_filesystems_are_refused_local_ones_not() {
        let without_the_later_disk: String =
            TABLE.lines().filter(|l| !l.starts_with("35 ")).map(|l| l.to_owned() + "\n").collect();
        let nfs = mount_in(&without_the_later_disk, Path::new("/srv/shared/db")).expect("matched");
        assert_eq!((nfs.fs_type.as_str(), nfs.is_network()), ("nfs4", true));
        assert!(at("/mnt/remote/x").is_network(), "fuse.sshfs");
        assert!(at("/lustre/project").is_network());
        for local in ["/home", "/srv/x", "/mnt/my disk", "/mnt/win/x"] {
            assert!(!at(local).is_network(), "{local}: {:?}", at(local));
        }
    }

    #[test]
    fn a_second_lock_names_the_first_holder_and_a_file_is_not_a_directory() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = prepare(dir.path(), false)?;
        let err = prepare(dir.path(), false).expect_err("a second coordinator on one data dir");
        let text = err.to_string();
        assert!(text.contains(&format!("pid {}", std::process::id())) && text.contains("host "), "{text}");
        drop(first);
        let _again = prepare(dir.path(), false).expect("the lock is released with its holder");

        let file = dir.path().join("afile");
        std::fs::write(&file, "x")?;
        let err = prepare(&file, false).expect_err("a regular file").to_string();
        assert!(err.contains("afile") && err.contains("not a directory"), "{err}");
        Ok(())
    }
}
