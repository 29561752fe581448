//! Rasterises a [`ClipPlan`] into RGB frames: flat shapes on a near-black background, edges
//! anti-aliased by 4x4 supersampling, all in plain f32 arithmetic so that the same plan gives the
//! same pixels everywhere.
//!
//! Timing: 1-fps sampling takes frames at 0, 1, ..., S-1 seconds of an S-second clip. The events
//! are placed symmetrically about the middle of that span, (S-1)/2 s, the first over 1/14 to 6/14
//! of it and the second over 8/14 to 13/14 (for 8 s: 0.5-3.0 s and 4.0-6.5 s), linearly. So the
//! 1-fps frames of a clip's time reverse (events reversed, order swapped) are exactly its own
//! frames in reverse order, and 8 s at 1 fps sees the start state, two frames of the first event,
//! two frames between the events, two of the second and the end state.

use super::scene::{ClipPlan, EventKind};
use image::RgbImage;

/// When each event runs, in seconds, in a clip of `seconds` s at `fps`: symmetric about the middle
/// of the span the 1-fps frames cover (all frames, for a one-second clip).
pub fn windows(fps: u32, seconds: u32) -> [(f64, f64); 2] {
    let span = if seconds >= 2 {
        (seconds - 1) as f64
    } else {
        (fps * seconds).saturating_sub(1) as f64 / fps.max(1) as f64
    };
    let at = |k: f64| k * span / 14.0;
    [(at(1.0), at(6.0)), (at(8.0), at(13.0))]
}
pub const BACKGROUND: [u8; 3] = [12, 12, 12];
const SUPERSAMPLE: usize = 4;

/// One object's look at one instant, in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectState {
    pub x: f64,
    pub y: f64,
    pub radius: f64,
    pub alpha: f64,
}

fn progress(t: f64, (a, b): (f64, f64)) -> f64 {
    if b <= a {
        // A one-frame clip: the event has happened or not.
        return if t >= a { 1.0 } else { 0.0 };
    }
    ((t - a) / (b - a)).clamp(0.0, 1.0)
}

fn lerp(a: f64, b: f64, t: f64) -> f64 {
    a + (b - a) * t
}

/// Where and how every object is at time `t` (seconds) when the events run over `windows`, in a
/// `width` x `height` frame.
pub fn states(
    plan: &ClipPlan,
    width: u32,
    height: u32,
    windows: [(f64, f64); 2],
    t: f64,
) -> Vec<ObjectState> {
    let (w, h) = (width as f64, height as f64);
    (0..plan.objects.len())
        .map(|i| {
            let [x0, y0, x1, y1] = plan.regions[i];
            let (lo_x, hi_x, lo_y, hi_y) = (x0 * w, x1 * w, y0 * h, y1 * h);
            // The largest radius fits the region's short side and stays a modest part of the frame.
            let r_max = (0.3 * (hi_x - lo_x).min(hi_y - lo_y)).min(0.16 * w.min(h));
            let margin = r_max + 1.0;
            let mut s = ObjectState {
                x: (lo_x + hi_x) / 2.0,
                y: (lo_y + hi_y) / 2.0,
                radius: 0.75 * r_max,
                alpha: 1.0,
            };
            for (e, window) in plan.events.iter().zip(windows) {
                if e.object != i {
                    continue;
                }
                let p = progress(t, window);
                let (small, big) = (0.45 * r_max, r_max);
                match e.kind {
                    EventKind::MoveLeft => s.x = lerp(hi_x - margin, lo_x + margin, p),
                    EventKind::MoveRight => s.x = lerp(lo_x + margin, hi_x - margin, p),
                    EventKind::MoveUp => s.y = lerp(hi_y - margin, lo_y + margin, p),
                    EventKind::MoveDown => s.y = lerp(lo_y + margin, hi_y - margin, p),
                    EventKind::Appear => s.alpha = p,
                    EventKind::Vanish => s.alpha = 1.0 - p,
                    EventKind::Grow => s.radius = lerp(small, big, p),
                    EventKind::Shrink => s.radius = lerp(big, small, p),
                }
            }
            s
        })
        .collect()
}

/// Whether the point (dx, dy) from a shape's centre (y down) is inside it.
fn inside(shape: super::scene::Shape, dx: f64, dy: f64, r: f64) -> bool {
    use super::scene::Shape::*;
    match shape {
        Circle => dx * dx + dy * dy <= r * r,
        // Sides scaled so the shapes look about as large as the circle.
        Square => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
        Diamond => dx.abs() + dy.abs() <= 1.15 * r,
        Triangle => {
            // Upward, vertices (0, -r), (+-r sin 60, r / 2): below the two slanted edges and
            // above the base.
            let k = 3f64.sqrt();
            dy <= 0.5 * r && dy >= -r + k * dx.abs()
        }
    }
}

/// The frame at time `t` (seconds) when the events run over `windows`.
pub fn frame(
    plan: &ClipPlan,
    width: u32,
    height: u32,
    windows: [(f64, f64); 2],
    t: f64,
) -> RgbImage {
    let states = states(plan, width, height, windows, t);
    let mut px = vec![[0f32; 3]; (width * height) as usize];
    for p in px.iter_mut() {
        *p = BACKGROUND.map(f32::from);
    }
    let n = SUPERSAMPLE;
    for (obj, s) in plan.objects.iter().zip(&states) {
        if s.alpha <= 0.0 || s.radius <= 0.0 {
            continue;
        }
        let colour = obj.colour.rgb().map(f32::from);
        let reach = 1.2 * s.radius + 1.0;
        let ys = ((s.y - reach).floor().max(0.0) as u32)
            ..((s.y + reach).ceil().min(height as f64) as u32);
        let xs = ((s.x - reach).floor().max(0.0) as u32)
            ..((s.x + reach).ceil().min(width as f64) as u32);
        for y in ys {
            for x in xs.clone() {
                let mut hits = 0;
                for sy in 0..n {
                    for sx in 0..n {
                        let fx = x as f64 + (sx as f64 + 0.5) / n as f64;
                        let fy = y as f64 + (sy as f64 + 0.5) / n as f64;
                        hits += inside(obj.shape, fx - s.x, fy - s.y, s.radius) as usize;
                    }
                }
                if hits == 0 {
                    continue;
                }
                let a = (s.alpha * hits as f64 / (n * n) as f64) as f32;
                let p = &mut px[(y * width + x) as usize];
                for c in 0..3 {
                    p[c] = p[c] * (1.0 - a) + colour[c] * a;
                }
            }
        }
    }
    let bytes = px
        .iter()
        .flat_map(|p| p.map(|v| v.round().clamp(0.0, 255.0) as u8))
        .collect();
    RgbImage::from_raw(width, height, bytes).expect("buffer of width x height x 3")
}

/// All `frames` frames of a clip; frame i is shown at i / fps seconds of a `seconds`-long clip.
pub fn clip(plan: &ClipPlan, width: u32, height: u32, fps: u32, seconds: u32) -> Vec<RgbImage> {
    let w = windows(fps, seconds);
    (0..fps * seconds)
        .map(|i| frame(plan, width, height, w, i as f64 / fps as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::scene::{Colour, Event, Object, Shape};
    use super::*;

    /// The windows of an 8-second clip: 0.5-3.0 s and 4.0-6.5 s.
    const W: [(f64, f64); 2] = [(0.5, 3.0), (4.0, 6.5)];

    #[test]
    fn windows_are_symmetric_about_the_sampled_span() {
        let w = windows(4, 8);
        for (got, want) in w.iter().zip(W) {
            assert!((got.0 - want.0).abs() < 1e-12 && (got.1 - want.1).abs() < 1e-12);
        }
        let w = windows(3, 1);
        assert!(w[1].1 <= 2.0 / 3.0 + 1e-12);
    }

    fn one(kind: EventKind) -> ClipPlan {
        ClipPlan {
            objects: vec![Object {
                shape: Shape::Square,
                colour: Colour::Red,
            }],
            regions: vec![[0.0, 0.0, 1.0, 1.0]],
            events: [
                Event { object: 0, kind },
                Event {
                    object: 0,
                    kind: EventKind::Grow,
                },
            ],
            caption: String::new(),
            group: 0,
        }
    }

    /// Centre of mass of the red pixels.
    fn red_centre(img: &RgbImage) -> (f64, f64) {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for (x, y, p) in img.enumerate_pixels() {
            if p[0] > 100 {
                sx += x as f64;
                sy += y as f64;
                n += 1.0;
            }
        }
        (sx / n, sy / n)
    }

    #[test]
    fn moves_go_the_named_way() {
        for (kind, dx, dy) in [
            (EventKind::MoveLeft, -1.0, 0.0),
            (EventKind::MoveRight, 1.0, 0.0),
            (EventKind::MoveUp, 0.0, -1.0),
            (EventKind::MoveDown, 0.0, 1.0),
        ] {
            let p = one(kind);
            let (a, b) = (
                red_centre(&frame(&p, 96, 96, W, 0.0)),
                red_centre(&frame(&p, 96, 96, W, 3.5)),
            );
            assert!(
                (b.0 - a.0) * dx >= 0.0 && (b.1 - a.1) * dy >= 0.0,
                "{kind:?}"
            );
            assert!(
                (b.0 - a.0).abs() + (b.1 - a.1).abs() > 40.0,
                "{kind:?} moved too little"
            );
        }
    }

    #[test]
    fn appear_vanish_grow_shrink() {
        let count = |img: &RgbImage| img.pixels().filter(|p| p[0] > 100).count();
        let p = one(EventKind::Appear);
        assert_eq!(count(&frame(&p, 64, 64, W, 0.0)), 0);
        assert!(count(&frame(&p, 64, 64, W, 3.5)) > 50);
        let p = one(EventKind::Vanish);
        assert!(count(&frame(&p, 64, 64, W, 0.0)) > 50);
        assert_eq!(count(&frame(&p, 64, 64, W, 3.5)), 0);
        // The second event of `one` is Grow: larger at the end than between the events.
        let p = one(EventKind::MoveLeft);
        assert!(count(&frame(&p, 64, 64, W, 7.0)) > 3 * count(&frame(&p, 64, 64, W, 3.5)));
    }
}
