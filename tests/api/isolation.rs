//! Two tests' data never meet: separate databases and separate Valkey key prefixes.

use courier::auth::Role;

use crate::helpers::{OPERATOR, spawn_app};

#[tokio::test]
async fn two_apps_never_see_each_others_rows_or_keys() {
    let (a, b) = tokio::join!(spawn_app(), spawn_app());
    assert_ne!(a.db_name, b.db_name);

    let body = serde_json::json!({"role": "customer", "name": "Ada", "email": "ada@example.com"});
    let created = a
        .post_as("/v1/users", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let user: serde_json::Value = created.json().await.expect("json");
    let id = user["id"].as_i64().expect("id");

    let seen_by_a = a
        .get_as(&format!("/v1/users/{id}"), Role::Operator, OPERATOR)
        .await;
    assert_eq!(seen_by_a.status().as_u16(), 200);
    let seen_by_b = b
        .get_as(&format!("/v1/users/{id}"), Role::Operator, OPERATOR)
        .await;
    assert_eq!(seen_by_b.status().as_u16(), 404);
    // The same email is free in the other database.
    let again = b
        .post_as("/v1/users", Role::Operator, OPERATOR, &body)
        .await;
    assert_eq!(again.status().as_u16(), 201);

    let (va, vb) = (&a.state.valkey, &b.state.valkey);
    assert_ne!(va.prefix(), vb.prefix());
    let mut conn = va.connection();
    let _: () = redis::cmd("SET")
        .arg(va.key("marker"))
        .arg("a")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let mut conn = vb.connection();
    let from_b: Option<String> = redis::cmd("GET")
        .arg(vb.key("marker"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(from_b, None);
    let from_a: Option<String> = redis::cmd("GET")
        .arg(va.key("marker"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(from_a.as_deref(), Some("a"));
}
