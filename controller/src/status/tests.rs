//! Status entries computed pass after pass: what is reused, rebuilt, rewritten.

use super::*;
use std::borrow::Cow;

use crate::api::{ready_condition, API_VERSION};
use crate::plan::outcome::{reason, Failure};
use crate::plan::AttachmentInfo;
use crate::source::manifests;

fn objects(attachments: usize) -> ObjectSet {
    let mut docs = vec!["kind: Network\nmetadata: {name: n}\nspec: {ipam: {config: [{subnet: 10.9.0.0/24}]}}\n".to_string()];
    for i in 0..attachments {
        docs.push(format!("kind: Attachment\nmetadata: {{name: a{i}}}\nspec: {{network: n, sandbox: {{netns: s{i}}}}}\n"));
        docs.push(format!("kind: PortMapping\nmetadata: {{name: p{i}}}\nspec: {{attachment: a{i}, ports: [{{containerPort: 80}}]}}\n"));
    }
    let text = docs.iter().map(|d| format!("apiVersion: {API_VERSION}\n{d}")).collect::<Vec<_>>().join("---\n");
    let loaded = manifests::parse(std::path::Path::new("t.yaml"), &text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.objects
}

fn pass_with(objects: &ObjectSet, report: &SyncReport, previous: Previous<'_>, now: &str) -> Computed {
    let facts = crate::plan::NodeFacts { node_name: "n1".into(), ephemeral_ports: (40000, 40100), ..Default::default() };
    let plan = crate::plan::plan(objects, &facts, &Default::default());
    compute(objects, &plan, report, &[], previous, "n1", now)
}

fn pass(objects: &ObjectSet, previous: Previous<'_>, now: &str) -> Computed {
    pass_with(objects, &SyncReport::default(), previous, now)
}

/// status.json as the state dir writes it.
fn file(book: &StatusBook) -> Vec<serde_json::Value> {
    book.entries.iter().map(|e| serde_json::from_slice(&e.json).unwrap()).collect()
}

/// Names of the entries that are not the previous book's very entries.
fn rebuilt(book: &StatusBook, before: &StatusBook) -> Vec<String> {
    let reused = |e: &Arc<StatusEntry>| before.entries.iter().any(|b| Arc::ptr_eq(b, e));
    book.entries.iter().filter(|e| !reused(e)).map(|e| e.key.name.name().to_string()).collect()
}

fn ready_of(book: &StatusBook, key: ObjectKey) -> (String, String) {
    let entry = book.entries.iter().find(|e| e.key == key).unwrap();
    let c = entry.ready().unwrap();
    (c.status.clone(), c.last_transition_time.clone().unwrap())
}

#[test]
fn unchanged_objects_keep_their_entries_and_a_new_one_is_added() {
    let two = objects(2);
    let first = pass(&two, Previous::Stored(Default::default()), "t1");
    assert!(first.changed);
    assert_eq!(first.book.entries.len(), 5);

    let again = pass(&two, Previous::Book(&first.book), "t2");
    assert!(!again.changed, "an unchanged set rewrites nothing");
    assert!(rebuilt(&again.book, &first.book).is_empty(), "every entry is the previous one");
    assert_eq!(file(&again.book), file(&first.book), "lastTransitionTime stays t1");

    // After a restart only status.json is left: every entry is rebuilt,
    // and the stored conditions keep their transition times.
    let restarted = pass(&two, Previous::stored(&file(&first.book)), "t2");
    assert_eq!(file(&restarted.book), file(&first.book));

    let three = objects(3);
    let grown = pass(&three, Previous::Book(&first.book), "t3");
    assert!(grown.changed);
    assert_eq!(grown.book.entries.len(), 7);
    let fresh = pass(&three, Previous::Stored(Default::default()), "t1");
    // Same content as computing from nothing, bar the new objects' transition time.
    let strip = |b: &StatusBook| serde_json::to_string(&file(b)).unwrap().replace("t3", "t1");
    assert_eq!(strip(&grown.book), strip(&fresh.book));
    // The old attachments and mappings are the previous entries; the
    // network (one attachment more) and the new objects are built.
    assert_eq!(rebuilt(&grown.book, &first.book), ["n", "a2", "p2"]);
}

#[test]
fn an_unchanged_object_whose_outcome_changed_is_rebuilt_and_the_rest_moved_over() {
    let two = objects(2);
    let first = pass(&two, Previous::Stored(Default::default()), "t1");
    // Same objects, same plan; the dataplane failed for a1 only.
    let mut failed = SyncReport::default();
    failed.endpoint_errors.insert(ObjectName::from("default/a1"), Failure::new(reason::KERNEL_ERROR, "veth: no"));
    let broken = pass_with(&two, &failed, Previous::Book(&first.book), "t2");
    assert!(broken.changed);
    assert_eq!(ready_of(&broken.book, ObjectKey::attachment("default", "a1")), ("False".into(), "t2".into()));
    // Its mapping follows it; everything else is the previous entry.
    assert_eq!(ready_of(&broken.book, ObjectKey::port_mapping("default", "p1")), ("False".into(), "t2".into()));
    assert_eq!(rebuilt(&broken.book, &first.book), ["a1", "p1"]);
    let verdict = broken.verdicts.iter().find(|v| v.key == ObjectKey::attachment("default", "a1")).unwrap();
    assert_eq!((verdict.ready, verdict.reason.as_str(), verdict.message.as_str()), (false, reason::KERNEL_ERROR, "veth: no"));
    assert!(broken.verdicts.iter().find(|v| v.key == ObjectKey::attachment("default", "a0")).unwrap().ready);

    // Repaired: Ready again, from the moment it was.
    let repaired = pass(&two, Previous::Book(&broken.book), "t3");
    assert_eq!(ready_of(&repaired.book, ObjectKey::attachment("default", "a1")), ("True".into(), "t3".into()));
    assert_eq!(ready_of(&repaired.book, ObjectKey::attachment("default", "a0")), ("True".into(), "t1".into()));
    assert!(repaired.verdicts.iter().all(|v| v.ready));
}

#[test]
fn objects_in_another_order_are_still_found_and_moved_over() {
    let facts = crate::plan::NodeFacts { node_name: "n1".into(), ephemeral_ports: (40000, 40100), ..Default::default() };
    let three = objects(3);
    let plan = crate::plan::plan(&three, &facts, &Default::default());
    let first = compute(&three, &plan, &SyncReport::default(), &[], Previous::Stored(Default::default()), "n1", "t1");
    // Another order, the same outcome (what was handed out is held).
    let mut reordered = three.clone();
    reordered.port_mappings.reverse();
    reordered.attachments.rotate_left(1);
    let replan = crate::plan::plan(&reordered, &facts, &plan.allocations);
    let again = compute(&reordered, &replan, &SyncReport::default(), &[], Previous::Book(&first.book), "n1", "t2");
    assert!(rebuilt(&again.book, &first.book).is_empty(), "every entry moved over");
    assert!(again.changed, "the file lists them in the new order");
    assert_eq!(ready_of(&again.book, ObjectKey::port_mapping("default", "p0")), ("True".into(), "t1".into()));
}

#[test]
fn a_changed_spec_or_status_rebuilds_the_entry() {
    let two = objects(2);
    let first = pass(&two, Previous::Stored(Default::default()), "t1");
    let mut edited = two.clone();
    Arc::make_mut(&mut edited.attachments[1]).spec.interface = Some("net9".into());
    let after = pass(&edited, Previous::Book(&first.book), "t2");
    assert!(after.changed);
    let a1 = file(&after.book).into_iter().find(|v| key_of(v) == Some(ObjectKey::attachment("default", "a1"))).unwrap();
    assert_eq!(a1["spec"]["interface"], "net9");
    assert_eq!(a1["status"]["interface"], "net9");
    let ObjectStatus::Attachment(typed, _) = &after.book.entries.iter().find(|e| e.key.name.name() == "a1").unwrap().status else {
        panic!("an attachment's status")
    };
    assert_eq!(typed.interface.as_deref(), Some("net9"), "the typed form says the same");

    // Fewer objects: the book shrinks and is rewritten.
    let one = objects(1);
    let shrunk = pass(&one, Previous::Book(&first.book), "t2");
    assert!(shrunk.changed);
    assert_eq!(shrunk.book.entries.len(), 3);
}

#[test]
fn a_status_is_its_inputs_and_nothing_else() {
    // The same inputs give the same status, whatever else differs.
    let info = AttachmentInfo { network: "n".into(), interface: Some("eth0".into()), ..Default::default() };
    let inputs = |node: &'static str| Inputs::Attachment {
        generation: Some(3),
        node: Cow::Borrowed(node),
        result: Ok(()),
        info: Some(Cow::Owned(info.clone())),
    };
    assert_eq!(status_of(&inputs("n1"), &[], "t1"), status_of(&inputs("n1").into_owned(), &[], "t1"));
    assert_ne!(inputs("n1"), inputs("n2"), "what the status says differs, so do its inputs");
    // A flip moves the transition time; anything else keeps it.
    let ready = status_of(&inputs("n1"), &[], "t1");
    assert_eq!(status_of(&inputs("n1"), ready.conditions(), "t2"), ready);
    let failed =
        Inputs::Attachment { generation: Some(3), node: Cow::Borrowed("n1"), result: Err(Cow::Owned(Failure::invalid("bad"))), info: None };
    let flipped = status_of(&failed, ready.conditions(), "t2");
    assert_eq!(ready_condition(flipped.conditions()).unwrap().last_transition_time.as_deref(), Some("t2"));
}
