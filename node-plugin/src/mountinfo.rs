//! `/proc/self/mountinfo`, parsed (a pure function of its text): what is mounted where.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major_minor: (u32, u32),
    /// The directory of the source file system that this mount shows.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (ro/rw, nosuid, ...).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// File-system-wide options.
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let options = fields.next()?.split(',').map(String::from).collect();
    // Optional fields (shared:N, master:N, ...) end with a lone "-".
    for f in fields.by_ref() {
        if f == "-" {
            break;
        }
    }
    let fs_type = unescape(fields.next()?);
    let source = unescape(fields.next()?);
    let super_options = fields
        .next()
        .unwrap_or("")
        .split(',')
        .map(String::from)
        .collect();
    Some(MountEntry {
        mount_id,
        parent_id,
        major_minor: (major.parse().ok()?, minor.parse().ok()?),
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

pub fn read() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
        Error::sys("read", "/proc/self/mountinfo")(Errno::from_raw(
            e.raw_os_error().unwrap_or(libc::EIO),
        ))
    })?;
    Ok(parse(&text))
}

/// The topmost mount at exactly `path`: later lines stack on earlier ones.
pub fn mount_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 7:3 / /var/lib/kubelet/plugins/x/globalmount rw,noatime shared:20 - ext4 /dev/loop3 rw
36 22 7:3 / /var/lib/kubelet/pods/a\\040b/mount ro,relatime shared:20 master:2 - ext4 /dev/loop3 rw
37 22 254:0 /srv/warren/volumes/k/data /var/lib/kubelet/pods/d/mount rw,relatime - ext4 /dev/vda rw
38 36 0:50 / /var/lib/kubelet/pods/a\\040b/mount rw - tmpfs tmpfs rw,size=10k
garbage line
";

    #[test]
    fn parses_fields_escapes_and_optional_fields() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 5);
        let m = &entries[2];
        assert_eq!(m.mount_point, Path::new("/var/lib/kubelet/pods/a b/mount"));
        assert_eq!(m.major_minor, (7, 3));
        assert!(m.is_read_only());
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(m.source, "/dev/loop3");
        assert_eq!(entries[3].root, Path::new("/srv/warren/volumes/k/data"));
        assert!(entries[1].options.contains(&"noatime".to_string()));
    }

    #[test]
    fn topmost_mount_wins() {
        let entries = parse(SAMPLE);
        let top = mount_at(&entries, Path::new("/var/lib/kubelet/pods/a b/mount")).unwrap();
        assert_eq!(top.fs_type, "tmpfs");
        assert!(mount_at(&entries, Path::new("/nowhere")).is_none());
    }

    #[test]
    fn reads_this_process() {
        assert!(read()
            .unwrap()
            .iter()
            .any(|m| m.mount_point == Path::new("/")));
    }
}
