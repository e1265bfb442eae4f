//! A process's title, as `ps` shows it: its command line, rewritten in place.
//!
//! The kernel shows `/proc/PID/cmdline` from the memory where `execve` put the
//! arguments (`arg_start`..`arg_end`, fields 48 and 49 of `/proc/self/stat`). Writing
//! there changes what every tool shows, with no privilege; a title can never be longer
//! than the arguments the process started with, so a parent that means to retitle a
//! child later starts it with room to spare (trailing spaces).

#![allow(unsafe_code)]

use std::io;

/// This process's command-line memory.
#[derive(Debug)]
pub struct Title {
    start: usize,
    len: usize,
}

impl Title {
    /// The command-line area of this process.
    pub fn of_this_process() -> io::Result<Title> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/self/stat");
        // Fields after the command name (which may hold spaces and parentheses), from
        // field 3 on: arg_start is field 48, arg_end field 49.
        let rest = stat
            .get(stat.rfind(')').ok_or_else(bad)? + 2..)
            .ok_or_else(bad)?;
        let mut fields = rest.split_whitespace().skip(45);
        let start: usize = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let end: usize = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        if start == 0 || end <= start || end - start > 1 << 20 {
            return Err(bad());
        }
        Ok(Title {
            start,
            len: end - start,
        })
    }

    /// How many bytes of title fit (the last byte of the area stays a NUL).
    pub fn room(&self) -> usize {
        self.len - 1
    }

    /// Show `text` (cut to [`room`](Self::room) bytes, on a character boundary), the
    /// rest of the area NUL.
    ///
    /// Call it from one thread only, and not while anything reads the process's
    /// arguments (`std::env::args`): those read the same memory.
    pub fn set(&self, text: &str) {
        let mut n = text.len().min(self.room());
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: `start..start + len` is this process's argument area as the kernel
        // reports it: mapped, writable (it is on the initial stack) and ours for the
        // life of the process. We write within it only, and the caller guarantees that
        // nothing reads it meanwhile.
        unsafe {
            let area = self.start as *mut u8;
            std::ptr::copy_nonoverlapping(text.as_ptr(), area, n);
            std::ptr::write_bytes(area.add(n), 0, self.len - n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process retitles itself: what `/proc/PID/cmdline` says changes, and a
    /// title too long for the room is cut.
    #[test]
    fn a_process_retitles_itself() {
        if std::env::var_os("TITLE_TEST_CHILD").is_some() {
            let title = Title::of_this_process().unwrap();
            title.set("retitled: worker g/0 job 17");
            std::thread::sleep(std::time::Duration::from_secs(30));
            return;
        }
        // Ourselves again, with a long argument to make room, waiting to be looked at.
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe)
            .args([
                "--exact",
                "title::tests::a_process_retitles_itself",
                "--nocapture",
                &" ".repeat(40),
            ])
            .env("TITLE_TEST_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let path = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut seen = String::new();
        while std::time::Instant::now() < deadline {
            seen = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default())
                .trim_end_matches('\0')
                .to_string();
            if seen.starts_with("retitled") {
                break;
            }
            std::thread::yield_now();
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(seen, "retitled: worker g/0 job 17");
    }

    #[test]
    fn this_process_has_a_title_area() {
        let t = Title::of_this_process().unwrap();
        assert!(t.room() >= 1);
    }
}
