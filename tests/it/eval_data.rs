//! Dataset readers on the real MSR-VTT and MSVD annotation files and on hand-written files in
//! the upstream DiDeMo, ActivityNet and MSR-VTT train layouts (`tests/fixtures/datasets`).

use mvserve::eval::{load, DataError, DatasetFormat};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets")
        .join(p)
}

#[test]
fn msrvtt_1ka_csv() {
    let path = fixture("MSRVTT_JSFUSION_test.semicolon.csv");
    assert_eq!(
        DatasetFormat::detect(&path).unwrap(),
        DatasetFormat::MsrVttCsv
    );
    let d = load(&path, None, None).unwrap();
    assert_eq!(d.videos.len(), 1000);
    assert_eq!(d.num_captions(), 1000);
    assert_eq!(d.videos[0].id, "video9770");
    assert_eq!(
        d.videos[0].captions,
        ["a person is connecting something to system"]
    );
    assert_eq!(d.videos[999].id, "video9871");
    assert_eq!(
        d.videos[999].captions,
        ["bearded guy in grey tshirt talking to the camera"]
    );
    // No such file next to the csv: the default extension, in the csv's folder.
    assert_eq!(d.videos[0].path, fixture("video9770.mp4"));
    assert_eq!(d.missing_videos().len(), 1000);
}

#[test]
fn msrvtt_json_has_the_same_pairs_as_the_csv() {
    let json = fixture("msrvtt_test_1k.json");
    assert_eq!(
        DatasetFormat::detect(&json).unwrap(),
        DatasetFormat::MsrVttJson
    );
    let videos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/videos");
    let j = load(&json, None, Some(&videos)).unwrap();
    let c = load(&fixture("MSRVTT_JSFUSION_test.semicolon.csv"), None, None).unwrap();
    let pairs = |d: &mvserve::eval::Dataset| -> BTreeSet<(String, String)> {
        d.videos
            .iter()
            .flat_map(|v| v.captions.iter().map(|c| (v.id.clone(), c.clone())))
            .collect()
    };
    assert_eq!(j.videos.len(), 1000);
    assert_eq!(pairs(&j), pairs(&c));
    // The json names the file; four of its clips are in the fixture folder.
    assert_eq!(j.videos[0].id, "video7020");
    assert_eq!(j.videos[0].path, videos.join("video7020.mp4"));
    assert_eq!(j.missing_videos().len(), 996);
}

#[test]
fn msvd_tsv_all_captions() {
    let path = fixture("MSVD_test.tsv");
    let d = load(&path, None, None).unwrap();
    assert_eq!(d.videos.len(), 670);
    // 27,763 is the published caption count of MSVD's test split.
    assert_eq!(d.num_captions(), 27_763);
    assert_eq!(d.videos[0].id, "eyhzdC936uk_15_27");
    assert_eq!(d.videos[0].captions[0], "a boy playing with dog");
    assert_eq!(
        d.videos[0].captions[1],
        "a man plays high five with his small dog"
    );
    assert_eq!(d.videos[669].id, "zzit5b_-ukg_5_20");
    assert_eq!(d.videos[0].path, fixture("eyhzdC936uk_15_27.avi"));
    let (caps, owner) = d.captions();
    assert_eq!(caps.len(), 27_763);
    assert_eq!(owner[0], 0);
    assert_eq!(*owner.last().unwrap(), 669);
    assert!(owner.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(d.pairs().len(), 27_763);
}

#[test]
fn msrvtt_train_split_takes_captions_from_the_data_json() {
    let d = load(&fixture("msrvtt-train/MSRVTT_train.9k.csv"), None, None).unwrap();
    let ids: Vec<&str> = d.videos.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["video2", "video0"]); // the split's order; video1 is not in it
    assert_eq!(
        d.videos[0].captions,
        ["a cartoon character walks", "a cartoon of a man running"]
    );
    assert_eq!(
        d.videos[1].captions,
        ["a car is shown", "a red sports car drives on a road"]
    );
    assert_eq!(
        d.pairs(),
        vec![
            (0, "a cartoon character walks".to_string()),
            (0, "a cartoon of a man running".to_string()),
            (1, "a car is shown".to_string()),
            (1, "a red sports car drives on a road".to_string()),
        ]
    );
    // The whole data json, read on its own: all three videos.
    let all = load(&fixture("msrvtt-train/MSRVTT_data.json"), None, None).unwrap();
    assert_eq!(all.videos.len(), 3);
    assert_eq!(all.num_captions(), 5);
}

#[test]
fn didemo_paragraphs_in_temporal_order() {
    let path = fixture("didemo_test_data.json");
    assert_eq!(DatasetFormat::detect(&path).unwrap(), DatasetFormat::DiDeMo);
    let d = load(&path, None, None).unwrap();
    assert_eq!(d.videos.len(), 3);
    assert_eq!(d.num_captions(), 3);
    assert_eq!(d.videos[0].id, "20146524@N00_3215874232_93b9a7b2ab.mov");
    // The second moment in the file starts first (segment 0 vs 3).
    assert_eq!(
        d.videos[0].captions,
        ["a dog jumps into the water the dog runs back into view"]
    );
    assert_eq!(
        d.videos[2].captions,
        ["a boy waves at the camera the boy walks away"]
    );
    assert!(DatasetFormat::DiDeMo.is_paragraph());
}

#[test]
fn activitynet_paragraphs_in_file_and_temporal_order() {
    let path = fixture("activitynet_val_1.json");
    assert_eq!(
        DatasetFormat::detect(&path).unwrap(),
        DatasetFormat::ActivityNet
    );
    let d = load(&path, None, None).unwrap();
    let ids: Vec<&str> = d.videos.iter().map(|v| v.id.as_str()).collect();
    // File order, not sorted order.
    assert_eq!(ids, ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0", "v_FsS_NCZEfaI"]);
    assert_eq!(
        d.videos[0].captions,
        ["A weight lifting tutorial is given. The coach helps the guy in red with the proper body placement and lifting technique."]
    );
    assert_eq!(
        d.videos[1].captions,
        ["A man is seen speaking to the camera. Three men are standing on a mat. The man in front begins to do karate on the mat."]
    );
    assert_eq!(d.videos[2].path, fixture("v_FsS_NCZEfaI.mp4"));
}

#[test]
fn jsonl_groups_captions_by_video() {
    let path = fixture("pairs.jsonl");
    let d = load(&path, None, None).unwrap();
    assert_eq!(d.videos.len(), 2);
    assert_eq!(d.videos[0].id, "videos/a.mp4");
    assert_eq!(d.videos[0].path, fixture("videos/a.mp4"));
    assert_eq!(
        d.videos[0].captions,
        ["a red circle moves left", "a circle slides to the left"]
    );
    assert_eq!(d.videos[1].captions, ["a blue square appears"]);
    let other = Path::new("/data/clips");
    let d = load(&path, Some(DatasetFormat::Jsonl), Some(other)).unwrap();
    assert_eq!(d.videos[1].path, other.join("videos/b.mp4"));
}

#[test]
fn bad_files_are_typed_errors_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(
        &p,
        "{\"video\": \"a.mp4\", \"caption\": \"x\"}\n{\"video\": \"b.mp4\"}\n",
    )
    .unwrap();
    match load(&p, None, None) {
        Err(DataError::Parse { line, msg, .. }) => {
            assert_eq!(line, 2);
            assert!(msg.contains("caption"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&p, "\n\n").unwrap();
    assert!(matches!(load(&p, None, None), Err(DataError::Empty(_))));
    let q = dir.path().join("notes.txt");
    std::fs::write(&q, "hello\n").unwrap();
    assert!(matches!(
        load(&q, None, None),
        Err(DataError::UnknownFormat(_))
    ));
    let missing = dir.path().join("none.csv");
    assert!(matches!(
        load(&missing, None, None),
        Err(DataError::Io { .. })
    ));
    let split = dir.path().join("split.csv");
    std::fs::write(&split, "video_id\nvideo1\n").unwrap();
    let e = load(&split, None, None).unwrap_err().to_string();
    assert!(e.contains("MSRVTT_data.json"), "{e}");
    let tsv = dir.path().join("x.tsv");
    std::fs::write(&tsv, "no tab here\n").unwrap();
    assert!(matches!(
        load(&tsv, None, None),
        Err(DataError::Parse { line: 1, .. })
    ));
}

#[test]
fn comma_csv_with_unquoted_commas_in_the_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test.csv");
    std::fs::write(
        &p,
        "key,vid_key,video_id,sentence\nret0,msr1,video1,a man, a dog and a ball\nret1,msr2,video2,\"quoted, fine\"\n",
    )
    .unwrap();
    let d = load(&p, None, None).unwrap();
    assert_eq!(d.videos[0].captions, ["a man, a dog and a ball"]);
    assert_eq!(d.videos[1].captions, ["quoted, fine"]);
}
