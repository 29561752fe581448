//! The ffprobe output of a file that lists more packets than `max_frames_decoded` is refused while
//! it is read, and the child is stopped: the server never buffers unbounded output (issue 11).
//!
//! A stand-in `ffprobe` (a shell script, found through `MVSERVE_FFMPEG`) prints more packet lines
//! than the limit and then keeps its stdout open. Reading it to the end before parsing would wait
//! for the wall-time limit; reading it as a stream stops at the limit. It runs alone in a process of
//! its own (`common::alone_in_process`), since it points `MVSERVE_FFMPEG` at the stand-ins for the
//! whole process.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use mvserve::media::{load_video, MediaLimits, SampleSpec};

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn ffprobe_packets_over_the_frame_limit_stop_the_child() {
    if !crate::common::alone_in_process(
        "media_ffprobe_limit::ffprobe_packets_over_the_frame_limit_stop_the_child",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mvserve-ffprobe-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("ffprobe.pid");
    script(&dir.join("ffmpeg"), "exit 1");
    script(
        &dir.join("ffprobe"),
        &format!(
            "echo $$ > '{}'\nseq 0 4999 | sed 's/.*/packet|pts_time=&|dts_time=&/'\nexec sleep 120",
            pid_file.display()
        ),
    );
    std::env::set_var("MVSERVE_FFMPEG", dir.join("ffmpeg"));

    // A WebM file goes to the ffmpeg path; its content does not matter to the stand-in.
    let video = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/videos/big_buck_bunny_432_433.webm");
    let limits = MediaLimits {
        max_frames_decoded: 1000,
        max_wall_time: Duration::from_secs(15),
        ..Default::default()
    };
    let err = load_video(&video, &SampleSpec::default(), &limits).unwrap_err();
    assert_eq!(err.code(), "too_large", "{err}");
    assert!(err.to_string().contains("more than 1000 frames"), "{err}");

    // The stand-in was stopped (killed and reaped) before load_video returned.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    assert!(
        !Path::new("/proc").join(pid).exists(),
        "ffprobe stand-in (pid {pid}) still running"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
