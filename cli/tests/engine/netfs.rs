//! The coordinator refuses a data directory on a network filesystem, tested on a real FUSE mount
//! (bindfs, which shows in the mount table as `fuse`/`fuse.bindfs`, the family sshfs, s3fs and
//! JuiceFS belong to). NFS itself needs a kernel server this sandbox cannot run; the mount-table
//! classification of nfs4, Lustre and the rest is unit-tested in `coordinator::data_dir`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, ensure};

use crate::docker::{BIN, run, serial, wait_for};

/// A bindfs mount, unmounted on drop.
struct Fuse {
    mount: PathBuf,
}

impl Fuse {
    fn mount(source: &Path, at: &Path) -> anyhow::Result<Self> {
        run("bindfs", &[&source.display().to_string(), &at.display().to_string()]).context(
            "mounting a FUSE filesystem with bindfs (Debian: apt-get install bindfs fuse3; needs /dev/fuse; .ci/run installs it)",
        )?;
        Ok(Self { mount: at.to_path_buf() })
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let at = self.mount.display().to_string();
        if run("fusermount3", &["-u", &at]).or_else(|_| run("fusermount", &["-u", &at])).is_err() {
            let _ = run("umount", &["-l", &at]);
        }
    }
}

#[test]
#[ignore = "needs FUSE and bindfs: cargo test --workspace --test engine -- --ignored (.ci/run runs it)"]
fn a_coordinator_refuses_a_data_dir_on_fuse_unless_allowed() -> anyhow::Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let (source, at) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&source)?;
    std::fs::create_dir_all(&at)?;
    let fuse = Fuse::mount(&source, &at)?;
    let data = fuse.mount.join("lorasweep");

    let out = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a coordinator started on FUSE");
    ensure!(
        said.contains("fuse") && said.contains("--allow-network-fs") && said.contains("WAL"),
        "the refusal does not name the filesystem, the reason and the override:\n{said}"
    );
    ensure!(!data.join("coordinator.db").exists(), "a database was created on the refused filesystem");

    // With the override it starts (and says the risk), then stops on SIGTERM.
    let mut child = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--allow-network-fs", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let db = data.join("coordinator.db");
    let started = wait_for("the database on FUSE", Duration::from_secs(30), || {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the coordinator exited with {status} despite --allow-network-fs");
        }
        Ok(db.exists().then_some(()))
    });
    let _ = run("kill", &["-TERM", &child.id().to_string()]);
    let _ = child.wait();
    started?;
    Ok(())
}
