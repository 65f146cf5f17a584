//! The order state machine as data: which action moves an order from which state to which, and
//! who may take it. Pure functions, no I/O; the transition executor
//! ([`crate::workflows::transition`]) applies the decision in Postgres.
//!
//! The table is the spec's step 7 plus the rules of the orders and payments issues:
//! - an order waits in PAYMENT_PENDING until its payment is authorised; the system then
//!   places it with its restaurant (`authorize`), or cancels it when the card is declined;
//!   the restaurant neither sees nor confirms an order before that;
//! - the restaurant confirms, starts preparing and marks ready (its own orders only);
//! - the assigned driver picks up and delivers (so pick-up needs an assigned driver);
//! - the customer cancels its own order while it is PAYMENT_PENDING, PLACED or CONFIRMED;
//! - an operator cancels in any non-terminal state;
//! - the system cancels a declined order, one the restaurant never confirmed, and one whose
//!   authorisation is about to expire before delivery; it auto-completes delivered orders.
//!   A system job that may only act in one state says so
//!   ([`TransitionRequest::only_from`](crate::workflows::transition::TransitionRequest));
//! - COMPLETED and CANCELLED are terminal.
//!
//! Payment conditions sit beside the table ([`payment_allows`]): an order completes only once
//! its payment is settled.

use crate::domain::{Action, Actor, DriverId, OrderStatus, RestaurantId, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActorClass {
    Customer,
    Restaurant,
    Driver,
    Operator,
    System,
}

impl ActorClass {
    fn of(actor: Actor) -> Self {
        match actor {
            Actor::Customer(_) => ActorClass::Customer,
            Actor::Restaurant(_) => ActorClass::Restaurant,
            Actor::Driver(_) => ActorClass::Driver,
            Actor::Operator(_) => ActorClass::Operator,
            Actor::System => ActorClass::System,
        }
    }
}

use ActorClass as A;
use OrderStatus as S;

/// One allowed transition: `from` --`action` by any of `by`--> `to`.
#[derive(Debug)]
struct Rule {
    from: OrderStatus,
    action: Action,
    to: OrderStatus,
    by: &'static [ActorClass],
}

const RULES: &[Rule] = &[
    Rule {
        from: S::PaymentPending,
        action: Action::Authorize,
        to: S::Placed,
        by: &[A::System],
    },
    Rule {
        from: S::PaymentPending,
        action: Action::Cancel,
        to: S::Cancelled,
        by: &[A::Customer, A::Operator, A::System],
    },
    Rule {
        from: S::Placed,
        action: Action::Confirm,
        to: S::Confirmed,
        by: &[A::Restaurant],
    },
    Rule {
        from: S::Placed,
        action: Action::Cancel,
        to: S::Cancelled,
        by: &[A::Customer, A::Operator, A::System],
    },
    Rule {
        from: S::Confirmed,
        action: Action::StartPreparing,
        to: S::Preparing,
        by: &[A::Restaurant],
    },
    Rule {
        from: S::Confirmed,
        action: Action::Cancel,
        to: S::Cancelled,
        by: &[A::Customer, A::Operator, A::System],
    },
    Rule {
        from: S::Preparing,
        action: Action::MarkReady,
        to: S::ReadyForPickup,
        by: &[A::Restaurant],
    },
    Rule {
        from: S::Preparing,
        action: Action::Cancel,
        to: S::Cancelled,
        by: &[A::Operator, A::System],
    },
    Rule {
        from: S::ReadyForPickup,
        action: Action::PickUp,
        to: S::PickedUp,
        by: &[A::Driver],
    },
    Rule {
        from: S::ReadyForPickup,
        action: Action::Cancel,
        to: S::Cancelled,
        by: &[A::Operator, A::System],
    },
    Rule {
        from: S::PickedUp,
        action: Action::Deliver,
        to: S::Delivered,
        by: &[A::Driver],
    },
    Rule {
        from: S::PickedUp,
        action: Action::Cancel,
        to: S::Cancelled,
        by: &[A::Operator, A::System],
    },
    Rule {
        from: S::Delivered,
        action: Action::AutoComplete,
        to: S::Completed,
        by: &[A::System],
    },
    Rule {
        from: S::Delivered,
        action: Action::Cancel,
        to: S::Cancelled,
        by: &[A::Operator],
    },
];

/// The parties of an order, for ownership checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parties {
    pub customer_id: UserId,
    pub restaurant_id: RestaurantId,
    pub driver_id: Option<DriverId>,
    /// Whether the order was ever placed with its restaurant (its payment authorised): the
    /// restaurant sees nothing of an order before that, even once it is cancelled.
    pub placed: bool,
}

impl Parties {
    /// Whether `actor` may see this order at all (operators and the system see every order).
    pub fn visible_to(&self, actor: Actor) -> bool {
        match actor {
            Actor::Customer(id) => id == self.customer_id,
            Actor::Restaurant(id) => self.placed && id == self.restaurant_id,
            Actor::Driver(id) => self.driver_id == Some(id),
            Actor::Operator(_) | Actor::System => true,
        }
    }
}

/// Why an action cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The actor has no business with this order (answered as "not found" to the API).
    #[error("no such order")]
    NotVisible,
    /// The actor's kind may never take this action.
    #[error("a {actor} may not {action} an order")]
    Forbidden { actor: &'static str, action: Action },
    /// The order's payment is not settled (captured, or a failure written off), so it cannot
    /// complete.
    #[error("the order's payment is not settled")]
    PaymentNotSettled,
    /// The action is not allowed in the order's current state (for this actor).
    #[error("cannot {action} an order that is {status}")]
    InvalidTransition {
        status: OrderStatus,
        action: Action,
        allowed: Vec<Action>,
    },
}

/// The `payments.status` values of a settled payment: captured (refunds included), released,
/// or a failed capture an operator has written off.
pub const SETTLED_PAYMENTS: [&str; 5] = [
    "captured",
    "partially_refunded",
    "refunded",
    "written_off",
    "released",
];

/// Where an order's payment stands, as far as the state machine cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentStanding {
    /// Not yet authorised, or authorised and not yet captured (or a capture still retrying).
    Open,
    /// Captured (refunds included), released, or a failure an operator has written off.
    Settled,
    /// The capture failed for good and no operator has written it off yet.
    Failed,
}

impl PaymentStanding {
    /// Where a payment in `status` stands (no payment row: open).
    pub fn of(status: Option<&str>) -> Self {
        match status {
            Some(s) if SETTLED_PAYMENTS.contains(&s) => PaymentStanding::Settled,
            Some("capture_declined" | "capture_failed") => PaymentStanding::Failed,
            _ => PaymentStanding::Open,
        }
    }
}

/// The payment condition of `action`: an order completes only once its payment is settled.
pub fn payment_allows(action: Action, payment: PaymentStanding) -> Result<(), Refusal> {
    match (action, payment) {
        (Action::AutoComplete, PaymentStanding::Open | PaymentStanding::Failed) => {
            Err(Refusal::PaymentNotSettled)
        }
        _ => Ok(()),
    }
}

/// The actions `actor` may take on an order in `status`.
pub fn allowed_actions(status: OrderStatus, actor: Actor) -> Vec<Action> {
    RULES
        .iter()
        .filter(|r| r.from == status && r.by.contains(&ActorClass::of(actor)))
        .map(|r| r.action)
        .collect()
}

/// Decides the next state of an order in `status` with `parties` when `actor` takes `action`.
pub fn decide(
    status: OrderStatus,
    parties: &Parties,
    action: Action,
    actor: Actor,
) -> Result<OrderStatus, Refusal> {
    if !parties.visible_to(actor) {
        // Drivers see an order only once assigned to it, so pick-up and delivery always have
        // an assigned driver (the `orders_picked_up_has_driver` constraint says so too).
        return Err(Refusal::NotVisible);
    }
    let class = ActorClass::of(actor);
    if !RULES
        .iter()
        .any(|r| r.action == action && r.by.contains(&class))
    {
        return Err(Refusal::Forbidden {
            actor: actor.kind(),
            action,
        });
    }
    RULES
        .iter()
        .find(|r| r.from == status && r.action == action && r.by.contains(&class))
        .map(|r| r.to)
        .ok_or_else(|| Refusal::InvalidTransition {
            status,
            action,
            allowed: allowed_actions(status, actor),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUSTOMER: UserId = UserId(10);
    const RESTAURANT: RestaurantId = RestaurantId(20);
    const DRIVER: DriverId = DriverId(30);
    const OPERATOR: UserId = UserId(1);

    fn parties(driver: Option<DriverId>) -> Parties {
        Parties {
            customer_id: CUSTOMER,
            restaurant_id: RESTAURANT,
            driver_id: driver,
            placed: true,
        }
    }

    /// The expected outcome of every (state, action, actor) triple, written out independently
    /// of the rule table.
    fn expected(
        status: OrderStatus,
        action: Action,
        actor: Actor,
    ) -> Result<OrderStatus, &'static str> {
        use Action::*;
        let kind = actor.kind();
        let may_ever = match action {
            Authorize => kind == "system",
            Confirm | StartPreparing | MarkReady => kind == "restaurant",
            PickUp | Deliver => kind == "driver",
            Cancel => matches!(kind, "customer" | "operator" | "system"),
            AutoComplete => kind == "system",
        };
        if !may_ever {
            return Err("forbidden");
        }
        let next = match (status, action) {
            (S::PaymentPending, Authorize) => S::Placed,
            (S::Placed, Confirm) => S::Confirmed,
            (S::Confirmed, StartPreparing) => S::Preparing,
            (S::Preparing, MarkReady) => S::ReadyForPickup,
            (S::ReadyForPickup, PickUp) => S::PickedUp,
            (S::PickedUp, Deliver) => S::Delivered,
            (S::Delivered, AutoComplete) => S::Completed,
            (s, Cancel) if !s.is_terminal() => {
                let ok = match kind {
                    "operator" => true,
                    "customer" => matches!(s, S::PaymentPending | S::Placed | S::Confirmed),
                    "system" => s != S::Delivered,
                    _ => false,
                };
                if !ok {
                    return Err("invalid");
                }
                S::Cancelled
            }
            _ => return Err("invalid"),
        };
        Ok(next)
    }

    #[test]
    fn every_state_action_and_actor_combination() {
        let actors = [
            Actor::Customer(CUSTOMER),
            Actor::Restaurant(RESTAURANT),
            Actor::Driver(DRIVER),
            Actor::Operator(OPERATOR),
            Actor::System,
        ];
        let mut checked = 0;
        for &status in OrderStatus::ALL {
            for &action in Action::ALL {
                for actor in actors {
                    let got = decide(status, &parties(Some(DRIVER)), action, actor);
                    match (expected(status, action, actor), &got) {
                        (Ok(want), Ok(next)) => {
                            assert_eq!(*next, want, "{status} {action} {actor:?}")
                        }
                        (Err("forbidden"), Err(Refusal::Forbidden { .. })) => {}
                        (Err("invalid"), Err(Refusal::InvalidTransition { allowed, .. })) => {
                            assert_eq!(*allowed, allowed_actions(status, actor));
                            assert!(!allowed.contains(&action));
                        }
                        (want, got) => {
                            panic!("{status} {action} {actor:?}: want {want:?}, got {got:?}")
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 9 * 8 * 5);
    }

    #[test]
    fn terminal_states_allow_nothing() {
        for status in [S::Completed, S::Cancelled] {
            for actor in [
                Actor::Operator(OPERATOR),
                Actor::System,
                Actor::Customer(CUSTOMER),
            ] {
                assert!(allowed_actions(status, actor).is_empty());
            }
        }
    }

    #[test]
    fn strangers_do_not_see_the_order() {
        let p = parties(Some(DRIVER));
        for actor in [
            Actor::Customer(UserId(11)),
            Actor::Restaurant(RestaurantId(21)),
            Actor::Driver(DriverId(31)),
        ] {
            assert_eq!(
                decide(S::Placed, &p, Action::Cancel, actor),
                Err(Refusal::NotVisible)
            );
        }
        // An unassigned order is invisible to every driver.
        assert_eq!(
            decide(
                S::ReadyForPickup,
                &parties(None),
                Action::PickUp,
                Actor::Driver(DRIVER)
            ),
            Err(Refusal::NotVisible)
        );
    }

    #[test]
    fn a_restaurant_never_sees_an_order_that_was_not_placed_with_it() {
        let unplaced = Parties {
            placed: false,
            ..parties(None)
        };
        for status in [S::PaymentPending, S::Cancelled] {
            assert_eq!(
                decide(
                    status,
                    &unplaced,
                    Action::Confirm,
                    Actor::Restaurant(RESTAURANT)
                ),
                Err(Refusal::NotVisible)
            );
        }
        assert!(unplaced.visible_to(Actor::Customer(CUSTOMER)));
        assert_eq!(
            decide(
                S::PaymentPending,
                &parties(None),
                Action::Confirm,
                Actor::Restaurant(RESTAURANT)
            ),
            Err(Refusal::InvalidTransition {
                status: S::PaymentPending,
                action: Action::Confirm,
                allowed: vec![]
            })
        );
        assert_eq!(
            decide(
                S::PaymentPending,
                &unplaced,
                Action::Authorize,
                Actor::System
            ),
            Ok(S::Placed)
        );
    }

    #[test]
    fn only_a_settled_payment_lets_an_order_complete() {
        use PaymentStanding::*;
        assert_eq!(PaymentStanding::of(Some("refunded")), Settled);
        assert_eq!(PaymentStanding::of(Some("capture_failed")), Failed);
        assert_eq!(PaymentStanding::of(Some("authorized")), Open);
        assert_eq!(PaymentStanding::of(None), Open);
        for &action in Action::ALL {
            for payment in [Open, Settled, Failed] {
                let refused = action == Action::AutoComplete && payment != Settled;
                assert_eq!(
                    payment_allows(action, payment).is_err(),
                    refused,
                    "{action} {payment:?}"
                );
            }
        }
    }

    #[test]
    fn pick_up_requires_an_assigned_driver() {
        assert_eq!(
            decide(
                S::ReadyForPickup,
                &parties(None),
                Action::PickUp,
                Actor::Operator(OPERATOR)
            ),
            Err(Refusal::Forbidden {
                actor: "operator",
                action: Action::PickUp
            })
        );
        assert_eq!(
            decide(
                S::ReadyForPickup,
                &parties(Some(DRIVER)),
                Action::PickUp,
                Actor::Driver(DRIVER)
            ),
            Ok(S::PickedUp)
        );
    }

    #[test]
    fn customer_cancel_after_confirmation_names_what_is_allowed() {
        let refusal = decide(
            S::Preparing,
            &parties(None),
            Action::Cancel,
            Actor::Customer(CUSTOMER),
        )
        .expect_err("too late to cancel");
        assert_eq!(
            refusal,
            Refusal::InvalidTransition {
                status: S::Preparing,
                action: Action::Cancel,
                allowed: vec![]
            }
        );
    }

    #[test]
    fn action_names_round_trip() {
        for &action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>(), Ok(action));
        }
    }
}
