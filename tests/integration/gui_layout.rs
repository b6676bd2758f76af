//! Every panel at 800 × 500 and at 1,600 × 1,000, after a real embed, fine-tune and comparison
//! with the tiny model: no two widgets overlap and none runs off the window's right edge. Rects
//! come from the accessibility tree (what a screen reader and kittest see), each clipped by its
//! ancestors (a scroll area's viewport hides what is scrolled away).

use eframe::egui::accesskit::Role;
use eframe::egui::{self, Rect};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::{Harness, Node};
use tripletlab::gui::{App, AppOptions, Tab};

use crate::gui::{fixture, step_until, Fixture};

/// A widget as laid out: its role and name, its rect clipped by every ancestor, its ancestors.
struct Placed {
    what: String,
    name: String,
    role: Role,
    rect: Rect,
    full: Rect,
    ancestors: Vec<String>,
    id: String,
}

fn collect(node: &Node<'_>, clip: Rect, ancestors: &mut Vec<String>, out: &mut Vec<Placed>) {
    let ak = node.accesskit_node();
    // Physical pixels; the harness draws at one pixel per point.
    let full = ak.bounding_box().map_or(Rect::NOTHING, |r| {
        Rect::from_min_max(
            egui::pos2(r.x0 as f32, r.y0 as f32),
            egui::pos2(r.x1 as f32, r.y1 as f32),
        )
    });
    let rect = full.intersect(clip);
    let id = format!("{:?}", ak.id());
    if std::env::var_os("LAYOUT_TREE").is_some() {
        eprintln!(
            "{}{:?} {:?} {:?}",
            " ".repeat(ancestors.len()),
            ak.role(),
            ak.label()
                .or_else(|| ak.value())
                .map(|l| l.chars().take(30).collect::<String>()),
            full
        );
    }
    // A label is where its lines of text are (a wrapped label's box also spans what sits
    // before its first line): its text runs are placed instead of it.
    let has_runs = ak.children().any(|c| c.role() == Role::TextRun);
    let layout_only = has_runs
        || matches!(
            ak.role(),
            Role::GenericContainer | Role::Window | Role::Pane | Role::ScrollView | Role::Group
        );
    if !layout_only && rect.width() > 0.5 && rect.height() > 0.5 {
        out.push(Placed {
            what: format!(
                "{:?} {:?}",
                ak.role(),
                ak.label().or_else(|| ak.value()).unwrap_or_default()
            ),
            name: ak.label().or_else(|| ak.value()).unwrap_or_default(),
            role: ak.role(),
            rect,
            full,
            ancestors: ancestors.clone(),
            id: id.clone(),
        });
    }
    let children: Vec<Node<'_>> = node.children().collect();
    if children.is_empty() {
        return;
    }
    ancestors.push(id);
    // Containers clip what they hold; the root is the window. A scroll area's content is
    // laid out whole: its scroll bars, siblings of the content, span the viewport that shows it.
    let mut inner = if full.is_positive() {
        clip.intersect(full)
    } else {
        clip
    };
    for bar in children
        .iter()
        .filter(|c| c.accesskit_node().role() == Role::ScrollBar)
    {
        let Some(b) = bar.accesskit_node().bounding_box() else {
            continue;
        };
        if b.y1 - b.y0 > b.x1 - b.x0 {
            inner.min.y = inner.min.y.max(b.y0 as f32);
            inner.max.y = inner.max.y.min(b.y1 as f32);
        } else {
            inner.min.x = inner.min.x.max(b.x0 as f32);
            inner.max.x = inner.max.x.min(b.x1 as f32);
        }
    }
    for c in &children {
        collect(c, inner, ancestors, out);
    }
    ancestors.pop();
}

/// Parts drawn inside another widget on purpose: a combo box's own label, a plot's legend
/// entries (the plot reports itself as `Unknown`), a resize handle over a panel's edge.
fn excused(outer: &Placed, inner: &Placed) -> bool {
    // A panel's resize handle is a few pixels of hit zone either side of its border.
    if outer.role == Role::Splitter {
        return true;
    }
    if outer.role == Role::ComboBox && inner.role == Role::Label && outer.name == inner.name {
        return true;
    }
    let contains = outer.rect.expand(1.0).contains_rect(inner.rect);
    contains
        && matches!(
            (outer.role, inner.role),
            (Role::ComboBox, Role::Label) | (Role::Unknown, Role::CheckBox)
        )
}

/// What overlaps or runs off the right edge in the current frame.
fn problems(h: &Harness<'static, App>, size: egui::Vec2) -> Vec<String> {
    let window = Rect::from_min_size(egui::Pos2::ZERO, size);
    let mut placed = Vec::new();
    collect(&h.root(), window, &mut Vec::new(), &mut placed);
    let mut out = Vec::new();
    if std::env::var_os("LAYOUT_DEBUG").is_some() {
        for p in &placed {
            eprintln!("{} {:?}", p.what, p.rect);
        }
    }
    for p in &placed {
        if p.full.right() > window.right() + 1.0 && p.full.left() < window.right() {
            out.push(format!("{} runs off the right edge ({:?})", p.what, p.full));
        }
    }
    for (i, a) in placed.iter().enumerate() {
        for b in &placed[i + 1..] {
            if a.ancestors.contains(&b.id) || b.ancestors.contains(&a.id) {
                continue;
            }
            if excused(a, b) || excused(b, a) {
                continue;
            }
            let x = a.rect.intersect(b.rect);
            if x.width() > 2.0 && x.height() > 2.0 {
                out.push(format!("{} overlaps {} ({:?})", a.what, b.what, x));
            }
        }
    }
    out
}

fn app_at(f: &Fixture, size: egui::Vec2) -> Harness<'static, App> {
    let options = AppOptions {
        data: Some(f.data.clone()),
        model: Some(f.model.display().to_string()),
        recovery_dir: Some(f.work.path().join("recovered")),
        fine_tune_out: Some(f.work.path().join("fine-tuned")),
        ..Default::default()
    };
    let mut h = Harness::builder()
        .with_size(size)
        .build_eframe(move |cc| App::new(cc, options));
    h.state_mut().settings.use_cache = false;
    h
}

fn check_every_panel(size: egui::Vec2) {
    let f = fixture(40);
    let mut h = app_at(&f, size);
    step_until(&mut h, "the file to load", |a| a.dataset.is_some());
    if h.query_by_label("Embed").is_none() {
        // Narrow windows start with the model sidebar collapsed.
        h.get_by_label("Model").click();
        h.step();
        h.step();
    }
    h.get_by_label("Embed").click();
    step_until(&mut h, "embedding", |a| a.zero_shot.is_some());
    h.state_mut().settings.train.epochs = 1;
    h.state_mut().tab = Tab::FineTune;
    h.step();
    h.get_by_label("Start fine-tuning").click();
    step_until(&mut h, "the comparison", |a| {
        a.experiments.comparison.is_some()
    });
    h.state_mut().inspector.selected = Some(1);
    h.state_mut().layout.model_panel = Some(size.x >= 1200.0);
    let mut found = Vec::new();
    let only = std::env::var("LAYOUT_TAB").ok();
    for tab in Tab::ALL {
        if only.as_ref().is_some_and(|t| *t != format!("{tab:?}")) {
            continue;
        }
        h.state_mut().tab = tab;
        for _ in 0..4 {
            h.step();
        }
        for p in problems(&h, size) {
            found.push(format!("{tab:?}: {p}"));
        }
    }
    assert!(
        found.is_empty(),
        "at {} x {}:\n{}",
        size.x,
        size.y,
        found.join("\n")
    );
}

#[test]
fn no_widget_overlaps_another_at_800_by_500() {
    check_every_panel(egui::vec2(800.0, 500.0));
}

#[test]
fn no_widget_overlaps_another_at_1600_by_1000() {
    check_every_panel(egui::vec2(1600.0, 1000.0));
}
