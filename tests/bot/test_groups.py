"""Groups: the bot speaks when mentioned or replied to, or to everything in insanity mode,
which only the chat's admins may switch; it remembers what it hears in between."""

from __future__ import annotations

from personafleet.prompt import PromptTemplate, Turn, render_prompt

GROUP = -100
ADMIN, MEMBER, GUEST = 501, 502, 503


async def test_group_answers_only_mentions_and_replies_to_the_bot(running_bot, telegram, model):
    async with running_bot():
        telegram.message("just chatting", chat_id=GROUP, user_id=GUEST, chat_type="group")
        telegram.message("is the build green?", chat_id=GROUP, user_id=MEMBER, chat_type="group", mention=True)
        sent = await telegram.wait_sent(1)
        assert sent[0]["text"] == "[devops-dude] re: is the build green?"  # mention stripped
        assert sent[0]["reply_parameters"]["message_id"] > 0  # quotes the message it answers

        someone = telegram.message("lunch?", chat_id=GROUP, user_id=ADMIN, chat_type="group")["message"]
        telegram.message("sure", chat_id=GROUP, user_id=GUEST, chat_type="group", reply_to=someone)
        telegram.message("why red?", chat_id=GROUP, user_id=MEMBER, chat_type="group", reply_to=sent[0])
        sent = await telegram.wait_sent(2)
        await telegram.wait_calls("getUpdates", len(telegram.method_calls("getUpdates")) + 2)
        assert len(sent) == 2 and sent[1]["text"] == "[devops-dude] re: why red?"
        assert [r.message for _, r in model.requests] == ["is the build green?", "why red?"]
        # What it did not answer it heard: the other members' messages are turns of their own.
        assert [t.text for t in model.requests[1][1].context] == ["lunch?", "sure"]  # the newest 3 turns fit


async def test_a_burst_of_messages_is_one_turn_as_in_training(running_bot, telegram, model):
    """Issue 26: every message the bot sees goes into the history, so one author's burst is one
    turn (the 5-minute merge of `persona prepare`), whether or not the bot answered each."""
    async with running_bot():
        telegram.message("the deploy failed", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        telegram.message("again", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        telegram.message("any idea why?", chat_id=GROUP, user_id=MEMBER, chat_type="group", mention=True)
        reply = (await telegram.wait_sent(1))[0]["text"]
        burst = "the deploy failed again any idea why?"
        assert model.requests[0][1].message == burst and model.requests[0][1].context == []

        telegram.message("thanks", chat_id=GROUP, user_id=MEMBER, chat_type="group", mention=True)
        await telegram.wait_sent(2)
        request = model.requests[1][1]
        assert [(t.role, t.text) for t in request.context] == [("user", burst), ("persona", reply)]
        prompt = render_prompt(PromptTemplate(), "", [*request.context, Turn(role="user", text=request.message)])
        assert prompt.splitlines()[1:] == [f"Собеседник: {burst}", f"Ты: {reply}", "Собеседник: thanks", "Ты: <extra_id_0>"]


async def test_insanity_mode_is_for_admins_and_answers_everything(running_bot, telegram, model):
    telegram.admins[GROUP] = {ADMIN}
    async with running_bot():
        telegram.message("/insanity on", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        assert "Only this chat's admins" in (await telegram.wait_sent(1))[0]["text"]
        telegram.message("anyone here?", chat_id=GROUP, user_id=MEMBER, chat_type="group")

        telegram.message("/insanity on", chat_id=GROUP, user_id=ADMIN, chat_type="group")
        assert "Insanity mode on" in (await telegram.wait_sent(2))[1]["text"]
        assert len(model.requests) == 0  # "anyone here?" came before it was on
        telegram.message("anyone here now?", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        # The unanswered "anyone here?" was heard: the same member's burst is one turn.
        assert (await telegram.wait_sent(3))[2]["text"] == "[devops-dude] re: anyone here? anyone here now?"

        telegram.message("/insanity", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        assert "Insanity mode is on" in (await telegram.wait_sent(4))[3]["text"]
        telegram.message("/insanity off", chat_id=GROUP, user_id=ADMIN, chat_type="group")
        assert "Insanity mode off" in (await telegram.wait_sent(5))[4]["text"]
        telegram.message("quiet now", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        await telegram.wait_calls("getUpdates", len(telegram.method_calls("getUpdates")) + 2)
        assert len(telegram.sent) == 5 and len(model.requests) == 1
        assert {int(c["user_id"]) for c in telegram.method_calls("getChatMember")} == {MEMBER, ADMIN}

        telegram.message("/insanity on", chat_id=7, user_id=7)
        assert "for groups" in (await telegram.wait_sent(6))[5]["text"]


async def test_clear_in_a_group_is_for_admins(running_bot, telegram, model):
    telegram.admins[GROUP] = {ADMIN}
    async with running_bot():
        telegram.message("remember the outage", chat_id=GROUP, user_id=MEMBER, chat_type="group", mention=True)
        await telegram.wait_sent(1)
        telegram.message("/clear", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        assert "Only this chat's admins" in (await telegram.wait_sent(2))[1]["text"]
        telegram.message("/clear_context", chat_id=GROUP, user_id=MEMBER, chat_type="group")
        assert "Only this chat's admins" in (await telegram.wait_sent(3))[2]["text"]
        telegram.message("still there?", chat_id=GROUP, user_id=MEMBER, chat_type="group", mention=True)
        await telegram.wait_sent(4)
        assert [t.text for t in model.requests[-1][1].context][0] == "remember the outage"

        telegram.message("/clear", chat_id=GROUP, user_id=ADMIN, chat_type="group")
        assert "forgotten" in (await telegram.wait_sent(5))[4]["text"]
        telegram.message("and now?", chat_id=GROUP, user_id=MEMBER, chat_type="group", mention=True)
        await telegram.wait_sent(6)
        assert model.requests[-1][1].context == []
