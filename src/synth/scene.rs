//! What a synthetic clip shows and says: the vocabulary (shapes, colours, events), the plan of
//! one clip (objects, two events in order, caption) and the drawing of minimal contrast groups
//! from a seed.
//!
//! A group takes two events X and Y and makes four clips: "X, then Y", "Y, then X" (the same
//! events in swapped order), and the time reverses of both, "rev Y, then rev X" and "rev X, then
//! rev Y", where reversing flips a direction (left/right, up/down, appear/vanish, grow/shrink).
//! A clip and its time reverse show the same 1-fps frames in opposite order (`render` times the
//! events so that this is exact), so a model that pools frames without their order cannot tell
//! them apart; the swapped pair differs only in order.

use std::collections::HashSet;

/// A deterministic 64-bit generator (SplitMix64), fixed here so that a seed means the same data
/// whatever version of `rand` the build has.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is below 2^-50 for the small n used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    White,
}

impl Colour {
    pub const ALL: [Colour; 6] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::White,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::White => "white",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 190, 60],
            Colour::Blue => [50, 90, 235],
            Colour::Yellow => [235, 215, 40],
            Colour::Purple => [150, 60, 200],
            Colour::White => [240, 240, 240],
        }
    }
}

/// What happens to one object during one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    MoveLeft,
    MoveRight,
    MoveUp,
    MoveDown,
    Appear,
    Vanish,
    Grow,
    Shrink,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::MoveLeft,
        EventKind::MoveRight,
        EventKind::MoveUp,
        EventKind::MoveDown,
        EventKind::Appear,
        EventKind::Vanish,
        EventKind::Grow,
        EventKind::Shrink,
    ];

    /// The event played backwards.
    pub fn reversed(self) -> Self {
        use EventKind::*;
        match self {
            MoveLeft => MoveRight,
            MoveRight => MoveLeft,
            MoveUp => MoveDown,
            MoveDown => MoveUp,
            Appear => Vanish,
            Vanish => Appear,
            Grow => Shrink,
            Shrink => Grow,
        }
    }

    pub fn verb(self) -> &'static str {
        use EventKind::*;
        match self {
            MoveLeft => "moves left",
            MoveRight => "moves right",
            MoveUp => "moves up",
            MoveDown => "moves down",
            Appear => "appears",
            Vanish => "vanishes",
            Grow => "grows",
            Shrink => "shrinks",
        }
    }

    /// `Some(true)` for a horizontal move, `Some(false)` for a vertical one, `None` otherwise.
    pub fn horizontal(self) -> Option<bool> {
        use EventKind::*;
        match self {
            MoveLeft | MoveRight => Some(true),
            MoveUp | MoveDown => Some(false),
            _ => None,
        }
    }

    pub fn is_size(self) -> bool {
        matches!(self, EventKind::Grow | EventKind::Shrink)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
}

impl Object {
    fn noun(self) -> String {
        format!("a {} {}", self.colour.name(), self.shape.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Index into the clip's objects.
    pub object: usize,
    pub kind: EventKind,
}

/// One clip: its objects, where each sits (as a fraction of the frame), and two events in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipPlan {
    pub objects: Vec<Object>,
    /// Per object: its region of the frame, (x0, y0, x1, y1) in [0, 1].
    pub regions: Vec<[f64; 4]>,
    pub events: [Event; 2],
    pub caption: String,
    /// The contrast group (clips that differ only in direction or order).
    pub group: usize,
}

fn caption(objects: &[Object], events: &[Event; 2]) -> String {
    let first = format!(
        "{} {}",
        objects[events[0].object].noun(),
        events[0].kind.verb()
    );
    let second = if events[1].object == events[0].object {
        events[1].kind.verb().to_string()
    } else {
        format!(
            "{} {}",
            objects[events[1].object].noun(),
            events[1].kind.verb()
        )
    };
    format!("{first}, then {second}")
}

/// Draws the two events of a group: either two objects (moves, if both move, on one axis) or
/// one object that moves and changes size (appearing before moving would not read well).
fn draw_events(rng: &mut SplitMix64) -> (Vec<Object>, [Event; 2]) {
    let obj = |rng: &mut SplitMix64| Object {
        shape: rng.pick(&Shape::ALL),
        colour: rng.pick(&Colour::ALL),
    };
    let a = obj(rng);
    if rng.below(3) == 0 {
        let moves = [
            EventKind::MoveLeft,
            EventKind::MoveRight,
            EventKind::MoveUp,
            EventKind::MoveDown,
        ];
        let m = rng.pick(&moves);
        let s = rng.pick(&[EventKind::Grow, EventKind::Shrink]);
        let (x, y) = if rng.below(2) == 0 { (m, s) } else { (s, m) };
        let e = |kind| Event { object: 0, kind };
        return (vec![a], [e(x), e(y)]);
    }
    let mut b = obj(rng);
    while b == a {
        b = obj(rng);
    }
    let kx = rng.pick(&EventKind::ALL);
    let mut ky = rng.pick(&EventKind::ALL);
    while matches!((kx.horizontal(), ky.horizontal()), (Some(h), Some(v)) if h != v) {
        ky = rng.pick(&EventKind::ALL);
    }
    (
        vec![a, b],
        [
            Event {
                object: 0,
                kind: kx,
            },
            Event {
                object: 1,
                kind: ky,
            },
        ],
    )
}

/// The regions of a clip's objects: the whole frame for one object; for two, halves split across
/// the axis of motion (columns when anything moves vertically, rows otherwise), sides drawn at
/// random.
fn regions(n: usize, events: &[Event; 2], rng: &mut SplitMix64) -> Vec<[f64; 4]> {
    if n == 1 {
        return vec![[0.0, 0.0, 1.0, 1.0]];
    }
    let vertical = events.iter().any(|e| e.kind.horizontal() == Some(false));
    let (first, second) = if vertical {
        ([0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0])
    } else {
        ([0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0])
    };
    if rng.below(2) == 0 {
        vec![first, second]
    } else {
        vec![second, first]
    }
}

/// Plans `n` clips in contrast groups of four (the last group may be cut short). Captions are
/// unique across the whole set: a group whose captions were already used is drawn again.
/// Groups are drawn in sequence, so the first clips of a larger `n` are the clips of a smaller one.
pub fn plan(n: usize, seed: u64) -> Result<Vec<ClipPlan>, String> {
    let mut rng = SplitMix64::new(seed);
    let mut used: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut group = 0;
    while out.len() < n {
        let mut tries = 0;
        let (objects, members) = loop {
            tries += 1;
            if tries > 10_000 {
                return Err(format!(
                    "no new caption group after 10000 draws ({} clips planned); ask for fewer clips",
                    out.len()
                ));
            }
            let (objects, [x, y]) = draw_events(&mut rng);
            let rev = |e: Event| Event {
                object: e.object,
                kind: e.kind.reversed(),
            };
            let members = [[x, y], [y, x], [rev(y), rev(x)], [rev(x), rev(y)]];
            let caps: Vec<String> = members.iter().map(|m| caption(&objects, m)).collect();
            if caps.iter().all(|c| !used.contains(c)) {
                used.extend(caps);
                break (objects, members);
            }
        };
        let regions = regions(objects.len(), &members[0], &mut rng);
        for events in members.into_iter().take(n - out.len()) {
            out.push(ClipPlan {
                caption: caption(&objects, &events),
                objects: objects.clone(),
                regions: regions.clone(),
                events,
                group,
            });
        }
        group += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_minimal_contrasts() {
        let p = plan(40, 7).unwrap();
        assert_eq!(p.len(), 40);
        let caps: HashSet<&str> = p.iter().map(|c| c.caption.as_str()).collect();
        assert_eq!(caps.len(), 40, "captions are unique");
        for g in p.chunks(4) {
            assert!(g
                .iter()
                .all(|c| c.group == g[0].group && c.objects == g[0].objects));
            let [x, y] = g[0].events;
            assert_eq!(g[1].events, [y, x]);
            assert_eq!(g[2].events[0].kind, y.kind.reversed());
            assert_eq!(g[3].events[1].kind, y.kind.reversed());
        }
    }

    #[test]
    fn captions_read_as_two_events_in_order() {
        let objects = [
            Object {
                shape: Shape::Circle,
                colour: Colour::Red,
            },
            Object {
                shape: Shape::Square,
                colour: Colour::Blue,
            },
        ];
        let e = |object, kind| Event { object, kind };
        assert_eq!(
            caption(
                &objects,
                &[e(0, EventKind::MoveLeft), e(1, EventKind::Appear)]
            ),
            "a red circle moves left, then a blue square appears"
        );
        assert_eq!(
            caption(&objects, &[e(0, EventKind::Grow), e(0, EventKind::MoveUp)]),
            "a red circle grows, then moves up"
        );
    }

    #[test]
    fn same_seed_same_plan_and_prefix_stable() {
        assert_eq!(plan(30, 3).unwrap(), plan(30, 3).unwrap());
        assert_eq!(plan(30, 3).unwrap()[..13], plan(13, 3).unwrap()[..]);
        assert_ne!(plan(8, 3).unwrap(), plan(8, 4).unwrap());
    }
}
