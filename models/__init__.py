"""The data and its rules: catalog and stock, carts, orders, shipping fees, the event inbox and outbox.

Nothing here imports Flask or kombu.
"""
from models.base import Base, utcnow
from models.carts import Cart, CartItem, CartStatus
from models.catalog import Product, Reservation, ReservationStatus, Stock
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.history import EventAttempt, OrderStatusChange, StaffAction, StaffAlert, StaffMember
from models.orders import Order, OrderLine, OrderPaymentIntent, OrderStatus, Shipment, ShipmentStatus, ShippingAddress
from models.refunds import Dispute, Refund, RefundSource
from models.shipping import ShippingRate
from models.staff import LoginFailure

__all__ = [
    "Base", "utcnow", "Cart", "CartItem", "CartStatus", "Product", "Reservation", "ReservationStatus",
    "Stock", "EventStatus", "InboxEvent", "OutboxMessage", "OutboxStatus", "Topic", "Order", "OrderLine",
    "OrderPaymentIntent", "OrderStatus", "Shipment", "ShipmentStatus", "ShippingAddress", "ShippingRate",
    "EventAttempt", "OrderStatusChange", "StaffAction", "StaffAlert", "StaffMember", "Dispute", "Refund",
    "RefundSource", "LoginFailure",
]
