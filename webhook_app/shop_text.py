"""The shop screens' words in Japanese and English, and how a request picks its language."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from flask import request, session
from markupsafe import Markup

from models.money import money
from models.shipping import PREFECTURE_NAMES_JA

LANGUAGES = ("ja", "en")
DEFAULT_LANGUAGE = "ja"
# Times on the screens are Japan's: the shop and its buyers are there.
SHOP_TIMEZONE = ZoneInfo("Asia/Tokyo")
# Japanese has no spaces, so a browser breaks a heading between any two characters, mid-word
# (確認できま / せんでした). In a heading's words this mark sits between phrases (bunsetsu): heading()
# makes it a <wbr>, the only place a heading breaks besides spaces and punctuation (word-break: keep-all
# in shop.css); translate() drops it, for the page title and wherever the words are not a heading.
PHRASE_BREAK = "|"

TEXT: dict[str, dict[str, str]] = {
    "shop": {"ja": "お茶の店", "en": "Tea shop"},
    "products": {"ja": "商品一覧", "en": "Products"},
    "cart": {"ja": "カート", "en": "Cart"},
    "my_page": {"ja": "マイページ", "en": "My page"},
    "step_cart": {"ja": "カート", "en": "Cart"},
    "step_info": {"ja": "お客様情報", "en": "Information"},
    "step_confirm": {"ja": "ご確認", "en": "Confirmation"},
    "step_complete": {"ja": "完了", "en": "Complete"},
    # The step bar's name, and what a screen reader says after a step already done (the colour says it to the eye).
    "steps_label": {"ja": "ご購入の手順", "en": "Checkout steps"},
    "step_done": {"ja": "（完了済み）", "en": " (done)"},
    "confirm_title": {"ja": "ご注文内容の|確認", "en": "Confirmation"},
    "complete_title": {"ja": "ご注文完了", "en": "Complete"},
    "price": {"ja": "価格", "en": "Price"},
    "available": {"ja": "在庫", "en": "Available"},
    "in_stock": {"ja": "在庫あり（{n}点）", "en": "In stock ({n})"},
    "only_left": {"ja": "残りわずか（あと{n}点）", "en": "Only {n} left"},
    "out_of_stock": {"ja": "在庫切れ", "en": "Out of stock"},
    "add_to_cart": {"ja": "カートに入れる", "en": "Add to cart"},
    "added": {"ja": "{name}をカートに入れました。", "en": "{name} is in your cart."},
    "quantity": {"ja": "数量", "en": "Quantity"},
    "bad_quantity": {"ja": "数量は1から{n}までで指定してください。", "en": "Choose a quantity from 1 to {n}."},
    "total_too_small": {"ja": "合計が1回のお支払いの下限（{smallest}）に届きません。商品を追加してください。",
                        "en": "The total is under {smallest}, the least one card payment can take. Please add to "
                              "your cart."},
    "currency_mismatch": {"ja": "カートの商品の価格の通貨が変わりました。カートをご確認ください。",
                          "en": "The prices in your cart are now in another currency. Please check your cart."},
    "repriced_not_added": {"ja": "カートの商品の価格が新しくなりました。新しい価格をご確認のうえ、{name}をもう一度カートに入れてください。",
                           "en": "The prices in your cart have changed. Please check the new prices, then add {name} "
                                 "again."},
    "currency_stranded": {"ja": "カートに{name}と同じ通貨の価格がない商品があるため、{name}を追加できません。その商品を削除してから追加してください。",
                          "en": "{name} cannot go in your cart: an item in it has no price in {name}'s currency. "
                                "Remove that item first."},
    "total_too_large": {"ja": "合計が1回のお支払いの上限（{largest}）を超えます。数量を減らすか、ご注文を分けてください。",
                        "en": "The total would be over {largest}, the most one card payment can take. Buy fewer, "
                              "or split the purchase into several orders."},
    "update": {"ja": "数量を変更", "en": "Update"},
    "remove": {"ja": "削除", "en": "Remove"},
    "subtotal": {"ja": "小計", "en": "Subtotal"},
    "shipping_fee": {"ja": "送料", "en": "Shipping"},
    "total": {"ja": "合計", "en": "Total"},
    "item": {"ja": "商品", "en": "Item"},
    "amount": {"ja": "金額", "en": "Amount"},
    "cart_empty": {"ja": "カートは空です。", "en": "Your cart is empty."},
    "continue_shopping": {"ja": "買い物を続ける", "en": "Continue shopping"},
    "to_info": {"ja": "ご購入手続きへ", "en": "Proceed to checkout"},
    "not_enough_stock": {"ja": "{name}は在庫が足りません（あと{n}点）。数量を減らしてください。",
                         "en": "Not enough {name} in stock (only {n} left): lower the quantity."},
    "name": {"ja": "お名前", "en": "Name"},
    "email": {"ja": "メールアドレス", "en": "E-mail"},
    "postal_code": {"ja": "郵便番号", "en": "Postal code"},
    "prefecture": {"ja": "都道府県", "en": "Prefecture"},
    "address": {"ja": "住所（市区町村・番地・建物名）", "en": "Address (city, street, building)"},
    "choose": {"ja": "選択してください", "en": "Choose"},
    "to_confirm": {"ja": "確認画面へ進む", "en": "Continue to confirmation"},
    "back_to_cart": {"ja": "カートに戻る", "en": "Back to cart"},
    "fix_fields": {"ja": "入力内容をご確認ください。", "en": "Please check the fields marked below."},
    "error_required": {"ja": "入力してください。", "en": "This field is required."},
    "error_too_long": {"ja": "{n}文字以内で入力してください。", "en": "At most {n} characters."},
    "error_email": {"ja": "メールアドレスの形式が正しくありません。", "en": "This is not a valid e-mail address."},
    "error_postal_code": {"ja": "郵便番号は123-4567の形式で入力してください。",
                          "en": "Enter the postal code as 123-4567."},
    "error_prefecture": {"ja": "都道府県を選択してください。", "en": "Choose a prefecture."},
    "error_no_shipping": {"ja": "{prefecture}へはお届けできません。別の都道府県を選択してください。",
                          "en": "We cannot deliver to {prefecture}. Please choose another prefecture."},
    "ship_to": {"ja": "お届け先", "en": "Ship to"},
    "change": {"ja": "変更", "en": "Change"},
    "card": {"ja": "クレジットカード", "en": "Card"},
    "pay": {"ja": "{total}を支払う", "en": "Pay {total}"},
    "paying": {"ja": "処理中…", "en": "Processing…"},
    "hold_before": {"ja": "「支払う」を押すと在庫を{minutes}分間確保します。",
                    "en": "Pressing Pay holds your items for {minutes} minutes."},
    "hold_until": {"ja": "在庫は{time}まで確保しています。", "en": "Your items are held for you until {time}."},
    "hold_expired": {"ja": "在庫の確保期限（{time}）を過ぎたため、このご注文はお支払いいただけません。"
                           "お手数ですが、商品をもう一度カートに入れてお手続きください。",
                     "en": "Your items were held for you until {time}. That time has passed, so this order can no "
                           "longer be paid. Please start again: put the items in your cart once more."},
    "start_again": {"ja": "最初からやり直す", "en": "Start again"},
    "no_answer": {"ja": "ショップから正しい応答がありませんでした。お支払いはまだ行われていません。もう一度お試しください。",
                  "en": "The shop did not answer as expected. Nothing has been paid yet; please try again."},
    "price_changed": {"ja": "価格が変更されました。新しい合計金額をご確認のうえ、もう一度お支払いください。",
                      "en": "A price changed since you added it. Please check the new total and pay again."},
    "declined": {"ja": "カードでのお支払いができませんでした：{message} 在庫は確保したままです。別のカードでお試しください。",
                 "en": "Your card was not charged: {message} Your items are still held; please try another card."},
    "auth_failed": {"ja": "本人認証（3Dセキュア）が完了しませんでした。もう一度お試しください。",
                    "en": "The card's 3-D Secure check was not completed. Please try again."},
    "stock_gone": {"ja": "申し訳ありません。{sku}の在庫が足りなくなりました。カートをご確認ください。",
                   "en": "Sorry, there is no longer enough {sku} in stock. Please check your cart."},
    "provider_down": {"ja": "決済サービスに接続できませんでした。時間をおいてもう一度お試しください。",
                      "en": "We could not reach the payment service. Please try again in a moment."},
    # The pay step sent the card to Stripe and heard no clear answer: it may have been charged.
    "payment_unknown_pay_again": {"ja": "決済サービスから応答がなかったため、カードへの請求があったかどうかをまだ確認できて"
                                        "いません。もう一度「支払う」を押していただいても、二重に請求されることはありません。",
                                  "en": "We did not get an answer from the payment service, so we cannot tell yet whether "
                                        "your card was charged. It is safe to press Pay again: you will not be charged "
                                        "twice."},
    "checkout_in_progress": {"ja": "ご注文の手続きがまだ完了していません。少し時間をおいてもう一度お試しください。",
                             "en": "Your order is still being placed. Please try again in a moment."},
    "payment_refused": {"ja": "決済サービスがこのお支払いを受け付けませんでした（{reason}）。カード情報を入力し直して、もう一度お試しください。",
                        "en": "The payment service refused this payment ({reason}). Please enter your card again and retry."},
    "refused_unknown": {"ja": "理由不明", "en": "no reason given"},
    "order_closed": {"ja": "このご注文は受付を終了しました。もう一度カートからお手続きください。",
                     "en": "This order can no longer be paid. Please start again from your cart."},
    "needs_js": {"ja": "カード情報の入力にはJavaScriptを有効にしてください。",
                 "en": "Card entry needs JavaScript: please enable it to pay."},
    "card_secure": {"ja": "カード情報は決済代行会社Stripeに直接送信され、当店には保存されません。",
                    "en": "Your card goes straight to Stripe, our payment provider; we never see or store it."},
    "processing_title": {"ja": "お支払いを|受け付けました", "en": "Payment received"},
    "processing_body": {"ja": "ご注文を確定しています。このページは自動で更新されます。",
                        "en": "Your order is being finalised. This page updates by itself."},
    "reload": {"ja": "更新", "en": "Refresh"},
    "check_again": {"ja": "もう一度確認する", "en": "Check again"},
    # The complete screen before our database records the payment: what Stripe says became of it.
    "stripe_processing_title": {"ja": "お支払いを|処理しています", "en": "Your payment is being processed"},
    "stripe_processing_body": {"ja": "カード会社でお支払いを処理中です。もう一度お支払いにならないでください。"
                                     "結果はこのページに表示されます（自動で更新されます）。",
                               "en": "The card company is still processing your payment. Please do not pay again: "
                                     "this page shows the outcome and updates by itself."},
    "authentication_title": {"ja": "本人認証|（3Dセキュア）が|完了していません",
                             "en": "Your card's 3-D Secure check is not finished"},
    "authentication_body": {"ja": "お支払いはまだ行われていません。お支払い画面からもう一度お試しください。",
                            "en": "Nothing has been charged yet. Please try again from the payment screen."},
    "not_paid_title": {"ja": "お支払いは|まだ|完了していません", "en": "Not paid yet"},
    "not_paid_body": {"ja": "このご注文のお支払いはまだ行われていません。",
                      "en": "No payment has been taken for this order yet."},
    "to_payment": {"ja": "お支払い画面へ", "en": "Go to payment"},
    "payment_unknown_title": {"ja": "お支払いの|状況を|確認できませんでした", "en": "We could not check your payment just now"},
    "payment_unknown_body": {"ja": "決済サービスから応答がありません。カードを入力された場合は、もう一度お支払いにならないでください。"
                                   "このページは自動で更新され、確認でき次第結果を表示します。",
                             "en": "The payment service did not answer. If you entered a card, please do not pay "
                                   "again: this page checks again by itself and shows the outcome as soon as it can."},
    # The confirmation while Stripe does not answer: no card field, no Pay (the last card may have been charged).
    "payment_unknown_confirm": {"ja": "決済サービスから応答がなく、前回のお支払いの結果を確認できませんでした。"
                                      "まだお支払いにならないでください。このページは自動で再確認し、前回のカードに請求が"
                                      "ないことを確認でき次第、お支払いいただけるようになります。",
                                "en": "The payment service did not answer, so we could not check the outcome of your "
                                      "last payment. Please do not pay again yet: this page checks again by itself, and "
                                      "offers Pay once it knows your last card was not charged."},
    "confirmed_title": {"ja": "ご注文が|確定しました", "en": "Order confirmed"},
    "confirmed_body": {"ja": "ご注文ありがとうございます。確認メールをお送りしました。",
                       "en": "Thank you for your order. A confirmation e-mail is on its way."},
    "review_title": {"ja": "ご注文を|確認しています", "en": "We are checking your order"},
    "review_body": {"ja": "お支払いの確認に時間がかかっています。担当者からご連絡いたします。",
                    "en": "Your payment needs a closer look. A member of our staff will contact you."},
    "cancelled_title": {"ja": "ご注文は|キャンセルされました", "en": "Order cancelled"},
    "refunded_title": {"ja": "ご注文は|返金済みです", "en": "Order refunded"},
    # An order cancelled as its hold ran out while Stripe charged the card (its event still on the way).
    "paid_as_hold_ran_out_title": {"ja": "お支払いを|受け付けました。|ご注文を|確認しています",
                                   "en": "Your payment was received; we are checking your order"},
    "paid_as_hold_ran_out_body": {"ja": "在庫の確保期限と同時にお支払いが行われたため、ご注文を自動で確定できませんでした。"
                                        "もう一度お支払いにならないでください。担当者が確認のうえご連絡いたします。",
                                  "en": "Your card was charged just as the time we held your items for ran out, so "
                                        "the order could not be confirmed by itself. Please do not pay again: a member "
                                        "of our staff will look at it and contact you."},
    # Pay on a cart whose earlier order's hold ran out, while Stripe does not say whether that card was charged.
    "payment_unknown_hold_ran_out": {"ja": "決済サービスから応答がなく、確保期限が切れた前回のご注文でカードに請求があったかを"
                                           "確認できませんでした。まだお支払いにならないでください。このページは少し後に"
                                           "自動で再確認し、請求がないことを確認でき次第、お支払いいただけるようになります。",
                                     "en": "The payment service did not answer, so we could not check whether your card "
                                           "was charged for your earlier order of these items (its hold ran out). Please "
                                           "do not pay yet: this page checks again in a moment by itself, and offers Pay "
                                           "once it knows that card was not charged."},
    "payment_unknown_hold_ran_out_pay": {"ja": "確保期限が切れた前回のご注文でカードに請求があったかを決済サービスに確認できな"
                                               "かったため、ご注文をお受けしていません（請求もしていません）。少し時間をおいて"
                                               "もう一度お試しください。",
                                         "en": "We could not check with the payment service whether your card was charged "
                                               "for your earlier order of these items, so nothing was ordered or charged "
                                               "now. Please try again in a moment."},
    "order_number": {"ja": "ご注文番号", "en": "Order number"},
    "shipment": {"ja": "配送", "en": "Shipment"},
    "shipment_pending": {"ja": "発送準備中", "en": "Being prepared"},
    "shipment_shipped": {"ja": "発送済み", "en": "Shipped"},
    "shipment_cancelled": {"ja": "配送取消", "en": "Cancelled"},
    "view_my_page": {"ja": "マイページでご注文を見る", "en": "See the order on my page"},
    "status": {"ja": "状態", "en": "Status"},
    "status_pending_payment": {"ja": "お支払い待ち", "en": "Awaiting payment"},
    "status_payment_failed": {"ja": "お支払い|未完了", "en": "Payment not completed"},
    "status_paid": {"ja": "お支払い済み", "en": "Paid"},
    "status_needs_review": {"ja": "確認中", "en": "Being checked"},
    "status_cancelled": {"ja": "キャンセル", "en": "Cancelled"},
    "status_refunded": {"ja": "返金済み", "en": "Refunded"},
    "status_paid_as_hold_ran_out": {"ja": "お支払い受付済み（確認中）", "en": "Payment received, being checked"},
    "status_payment_unknown": {"ja": "確認できませんでした", "en": "Could not be checked just now"},
    "status_payment_received": {"ja": "お支払い受付済み（ご注文を確定中）", "en": "Payment received; confirming your order"},
    "status_payment_processing": {"ja": "お支払い処理中", "en": "Payment being processed"},
    "status_awaiting_authentication": {"ja": "本人認証（3Dセキュア）待ち", "en": "Waiting for the card's 3-D Secure check"},
    "history": {"ja": "履歴", "en": "History"},
    "ordered_at": {"ja": "ご注文日時", "en": "Ordered"},
    "token_hint": {"ja": "お届け先はご注文確認メールのリンクから表示できます。",
                   "en": "Open the link in your order e-mail to see the delivery details."},
    "bad_token": {"ja": "このリンクでは|ご注文を|表示できません。|ご注文確認メールの|リンクを|お使いください。",
                  "en": "This link does not open this order. Please use the link in your order e-mail."},
    "not_found": {"ja": "ページが|見つかりません。", "en": "Page not found."},
    "form_expired": {"ja": "フォームの|有効期限が|切れました。|もう一度|お試しください。",
                     "en": "This form expired. Please try again."},
    "details_changed": {"ja": "この画面を表示した後に、お客様情報またはカートの内容が変更されました。内容をご確認のうえ、もう一度お支払いください。",
                        "en": "Your details or your cart changed since this page was shown. Please check them and press Pay again."},
    # The error pages (webhook_app.errors): a title (the page's heading: phrases apart), then what happened
    # and what to do. bad_token, not_found and form_expired are a page's heading too.
    "error_bad_request_title": {"ja": "送信内容を|受け付けられませんでした", "en": "This request was not accepted"},
    "error_bad_request": {"ja": "送信された内容を処理できませんでした。前のページに戻って、もう一度お試しください。",
                          "en": "What was sent could not be processed. Please go back and try again."},
    "error_method_title": {"ja": "このアドレスは|この方法では|使えません", "en": "This address cannot be used this way"},
    "error_method": {"ja": "このアドレスは、この種類のリクエストを受け付けていません。ショップの画面からお進みください。",
                     "en": "This address does not take this kind of request. Please continue from the shop's pages."},
    "error_too_large_title": {"ja": "送信内容が|大きすぎます", "en": "What you sent is too large"},
    "error_too_large": {"ja": "入力内容を短くして、もう一度お試しください。",
                        "en": "Please shorten what you entered and try again."},
    "error_internal_title": {"ja": "申し訳ありません。|エラーが|発生しました", "en": "Sorry, something went wrong"},
    "error_internal": {"ja": "当店のシステムの問題で、このページを表示できませんでした。問題は記録されています。時間をおいてもう一度お試しください。",
                       "en": "A problem on our side stopped this page; it has been recorded. Please try again in a moment."},
    "error_unavailable_title": {"ja": "ただいま|処理できません", "en": "We cannot handle this right now"},
    "error_unavailable": {"ja": "一時的に処理できませんでした。時間をおいてもう一度お試しください。",
                          "en": "This could not be done just now. Please try again in a moment."},
    "error_other_title": {"ja": "処理を|完了できませんでした", "en": "This could not be completed"},
    "error_other": {"ja": "このリクエストを完了できませんでした。前のページに戻って、もう一度お試しください。",
                    "en": "This request could not be completed. Please go back and try again."},
    "back_to_shop": {"ja": "ショップのトップへ戻る", "en": "Back to the shop's home page"},
    "language": {"ja": "English", "en": "日本語"},
}


def current_language() -> str:
    """`?lang=` (remembered in the session), else the session's choice, else Accept-Language."""
    chosen = request.args.get("lang")
    if chosen in LANGUAGES:
        session["lang"] = chosen
        return chosen
    if session.get("lang") in LANGUAGES:
        return session["lang"]
    return request.accept_languages.best_match(LANGUAGES, default=DEFAULT_LANGUAGE)


def translate(key: str, language: str, **values) -> str:
    return TEXT[key][language].replace(PHRASE_BREAK, "").format(**values)


def heading(key: str, language: str) -> Markup:
    """A heading's words as HTML, escaped, with <wbr> between their phrases (PHRASE_BREAK)."""
    return Markup("<wbr>").join(TEXT[key][language].split(PHRASE_BREAK))


def prefecture_label(prefecture: str, language: str) -> str:
    return PREFECTURE_NAMES_JA.get(prefecture, prefecture) if language == "ja" else prefecture


def price(amount: int, currency: str | None) -> str:
    """An amount in minor units as the screens write it, by its currency: ¥3,100 as people in Japan write
    yen (no minor unit), $31.00, €12.50, £9.99, else 12.50 CHF (models.money)."""
    return money(amount, currency, sign=True)


def local_time(moment: datetime, language: str) -> str:
    if moment.tzinfo is None:  # SQLite hands back naive UTC
        moment = moment.replace(tzinfo=timezone.utc)
    local = moment.astimezone(SHOP_TIMEZONE)
    return local.strftime("%Y年%m月%d日 %H:%M") if language == "ja" else local.strftime("%Y-%m-%d %H:%M (JST)")
