from channels.generic.websocket import AsyncJsonWebsocketConsumer


class HelloConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/hello/`: answers who the connection is authenticated as. Lets clients and health
    checks confirm websocket auth works before they watch a job."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()
        await self.send_json({"type": "hello", "user": user.username, "auth": self.scope["auth"]})
